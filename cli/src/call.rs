//! `weft call SERVICE/METHOD -d JSON`: a unary call by service name through
//! discovery and mTLS, with JSON in and out converted through the contracts'
//! descriptors (grpcurl that knows the mesh).

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

/// Runs the call and prints the response as JSON.
pub async fn run(mesh: &MeshArgs, target: &str, data: &str) -> Result<()> {
    let pool = DescriptorPool::decode(weft_proto::FILE_DESCRIPTOR_SET)?;
    let (method, service) = resolve(&pool, target)?;
    let mut deserializer = serde_json::Deserializer::from_str(data);
    let request = DynamicMessage::deserialize(method.input(), &mut deserializer)
        .with_context(|| format!("-d is not a valid {} in JSON", method.input().full_name()))?;
    deserializer.end()?;
    let mesh = Mesh::connect(mesh).await?;
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
}
