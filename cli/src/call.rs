//! `weft call SERVICE/METHOD -d JSON`: a unary call by service name through
//! discovery and mTLS, with JSON in and out converted through the contracts'
//! descriptors (grpcurl that knows the mesh). Weft's own contracts are built
//! in; any other service is described by the service itself, through
//! reflection, so `weft call wishlist/ListItems` works for a service Weft
//! was built without.

use std::str::FromStr;

use anyhow::{Context, Result, bail};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use weft_mesh::ClientOptions;

use crate::target::{Mesh, MeshArgs};

/// Finds `target` (`orders/PlaceOrder` or
/// `weft.orders.v1.OrdersService/PlaceOrder`) in the contracts; returns the
/// method and the service's name in discovery.
pub fn resolve(pool: &DescriptorPool, target: &str) -> Result<(MethodDescriptor, String)> {
    let (service, method) = target
        .split_once('/')
        .with_context(|| format!("{target:?}: give SERVICE/METHOD, e.g. orders/GetOrder"))?;
    let found = pool
        .services()
        .find(|s| s.full_name() == service || s.package_name() == format!("weft.{service}.v1"));
    let Some(found) = found else {
        let known: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        bail!("no service {service:?}; known: {}", known.join(", "));
    };
    let name = found
        .package_name()
        .strip_prefix("weft.")
        .and_then(|p| p.strip_suffix(".v1"))
        .with_context(|| format!("{} is not a Weft service", found.full_name()))?
        .to_owned();
    let Some(m) = found.methods().find(|m| m.name() == method) else {
        let known: Vec<String> = found.methods().map(|m| m.name().to_owned()).collect();
        bail!(
            "{} has no method {method:?}; it has: {}",
            found.full_name(),
            known.join(", ")
        );
    };
    Ok((m, name))
}

/// Finds `target` in what the service registered as `service` in discovery
/// describes through reflection: `wishlist/ListItems` (the one service it
/// serves with that method) or `wishlist.v1.WishlistService/ListItems`.
pub fn resolve_reflected(
    pool: &DescriptorPool,
    target: &str,
    service: &str,
) -> Result<MethodDescriptor> {
    let (given, method) = target
        .split_once('/')
        .with_context(|| format!("{target:?}: give SERVICE/METHOD, e.g. orders/GetOrder"))?;
    let candidates: Vec<_> = pool
        .services()
        .filter(|s| !s.full_name().starts_with("grpc."))
        .filter(|s| s.full_name() == given || given == service)
        .filter_map(|s| s.methods().find(|m| m.name() == method))
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            let known: Vec<String> = pool
                .services()
                .filter(|s| !s.full_name().starts_with("grpc."))
                .flat_map(|s| {
                    s.methods()
                        .map(|m| format!("{}/{}", s.full_name(), m.name()))
                        .collect::<Vec<_>>()
                })
                .collect();
            bail!(
                "{service} serves no method {given}/{method}; it serves: {}",
                known.join(", ")
            )
        }
        _ => bail!(
            "{method} is served by more than one service of {service}: give the service's full name"
        ),
    }
}

/// The discovery name a target names: `wishlist` for `wishlist/AddItem`,
/// and the first part of the package for a full name
/// (`wishlist.v1.WishlistService/AddItem`).
fn discovery_name(target: &str) -> &str {
    let given = target.split_once('/').map_or(target, |(s, _)| s);
    given.split('.').next().unwrap_or(given)
}

/// Asks an instance of `service` for the descriptors of what it serves
/// (grpc.reflection.v1), with their dependencies.
async fn reflect(mesh: &Mesh, service: &str) -> Result<DescriptorPool> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut client = ServerReflectionClient::new(mesh.channel(service, ClientOptions::default())?);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([ask(MessageRequest::ListServices(
            String::new(),
        ))]))
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "asking {service} what it serves: {:?} {}",
                s.code(),
                s.message()
            )
        })?
        .into_inner();
    let mut names = Vec::new();
    while let Some(answer) = answers.message().await? {
        if let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response {
            names.extend(list.service.into_iter().map(|s| s.name));
        }
    }
    let requests: Vec<_> = names
        .iter()
        .filter(|n| !n.starts_with("grpc."))
        .map(|n| ask(MessageRequest::FileContainingSymbol(n.clone())))
        .collect();
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "asking {service} for its contract: {:?} {}",
                s.code(),
                s.message()
            )
        })?
        .into_inner();
    let mut files = std::collections::BTreeMap::new();
    while let Some(answer) = answers.message().await? {
        match answer.message_response {
            Some(MessageResponse::FileDescriptorResponse(found)) => {
                for raw in found.file_descriptor_proto {
                    let file = prost_types::FileDescriptorProto::decode(raw.as_slice())?;
                    files.insert(file.name.clone().unwrap_or_default(), file);
                }
            }
            Some(MessageResponse::ErrorResponse(e)) => {
                bail!("{service} could not describe itself: {}", e.error_message)
            }
            _ => {}
        }
    }
    // Over Weft's own contracts and the well-known types they import, which
    // a server may leave out (and a contract may import): a file already
    // there is not added twice.
    let mut pool = DescriptorPool::decode(weft_proto::FILE_DESCRIPTOR_SET)?;
    let new: Vec<_> = files
        .into_values()
        .filter(|f| pool.get_file_by_name(f.name()).is_none())
        .collect();
    pool.add_file_descriptor_protos(new)
        .with_context(|| format!("the contract {service} described"))?;
    Ok(pool)
}

/// Runs the call and prints the response as JSON.
pub async fn run(mesh: &MeshArgs, target: &str, data: &str) -> Result<()> {
    let builtin = DescriptorPool::decode(weft_proto::FILE_DESCRIPTOR_SET)?;
    let mesh = Mesh::connect(mesh).await?;
    let (method, service) = match resolve(&builtin, target) {
        Ok(found) => found,
        // Not one of Weft's own: the service describes itself.
        Err(builtin_error) => {
            let service = discovery_name(target).to_owned();
            if mesh.require(&service).await.is_err() {
                return Err(builtin_error);
            }
            let pool = reflect(&mesh, &service).await?;
            (resolve_reflected(&pool, target, &service)?, service)
        }
    };
    let mut deserializer = serde_json::Deserializer::from_str(data);
    let request = DynamicMessage::deserialize(method.input(), &mut deserializer)
        .with_context(|| format!("-d is not a valid {} in JSON", method.input().full_name()))?;
    deserializer.end()?;
    mesh.require(&service).await?;
    let channel = mesh.channel(&service, ClientOptions::default())?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| anyhow::anyhow!("{service} is not reachable: {e}"))?;
    let path = http::uri::PathAndQuery::from_str(&format!(
        "/{}/{}",
        method.parent_service().full_name(),
        method.name()
    ))?;
    let codec = DynamicCodec(method.output());
    let mut call = tonic::Request::new(request);
    call.set_timeout(std::time::Duration::from_secs(30));
    match grpc.unary(call, path, codec).await {
        Ok(response) => {
            let mut out = serde_json::Serializer::pretty(std::io::stdout());
            response
                .into_inner()
                .serialize_with_options(&mut out, &Default::default())?;
            println!();
            Ok(())
        }
        Err(status) => bail!("{:?}: {}", status.code(), status.message()),
    }
}

/// Encodes and decodes messages known only by their descriptors.
#[derive(Debug, Clone)]
struct DynamicCodec(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.0.clone())
    }
}

#[derive(Debug)]
struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: DynamicMessage,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(format!("encoding the request: {e}")))
    }
}

#[derive(Debug)]
struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, tonic::Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding the response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_full_service_names_resolve() {
        let pool = DescriptorPool::decode(weft_proto::FILE_DESCRIPTOR_SET).unwrap();
        let (m, name) = resolve(&pool, "orders/PlaceOrder").unwrap();
        assert_eq!(m.full_name(), "weft.orders.v1.OrdersService.PlaceOrder");
        assert_eq!(name, "orders");
        let (_, name) = resolve(&pool, "weft.inventory.v1.InventoryService/GetStock").unwrap();
        assert_eq!(name, "inventory");
        let err = resolve(&pool, "orders/Nope").unwrap_err().to_string();
        assert!(err.contains("PlaceOrder"), "{err}");
        assert!(resolve(&pool, "nope/X").is_err());
        assert!(resolve(&pool, "orders").is_err());
    }

    #[test]
    fn other_services_resolve_in_what_they_describe() {
        // Weft's contracts stand in for a service's own description.
        let pool = DescriptorPool::decode(weft_proto::FILE_DESCRIPTOR_SET).unwrap();
        assert_eq!(discovery_name("wishlist/AddItem"), "wishlist");
        assert_eq!(
            discovery_name("wishlist.v1.WishlistService/AddItem"),
            "wishlist"
        );
        let m = resolve_reflected(&pool, "inventory/GetStock", "inventory").unwrap();
        assert_eq!(m.full_name(), "weft.inventory.v1.InventoryService.GetStock");
        let m = resolve_reflected(&pool, "weft.orders.v1.OrdersService/GetOrder", "weft").unwrap();
        assert_eq!(m.full_name(), "weft.orders.v1.OrdersService.GetOrder");
        let err = resolve_reflected(&pool, "inventory/Nope", "inventory")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("serves no method") && err.contains("GetStock"),
            "{err}"
        );
    }
}
