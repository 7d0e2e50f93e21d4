//! Registers instances in Cloud Map and reports their custom health. Written
//! for AWS's semantics: operations are asynchronous (we wait for them within a
//! bound), and registering an existing instance id updates it in place.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_servicediscovery::Client;
use aws_sdk_servicediscovery::types::{
    CustomHealthStatus, FilterCondition, OperationStatus, ServiceFilter, ServiceFilterName,
};
use tokio::sync::Mutex;

use super::api::{
    ATTR_IPV4, ATTR_IPV6, ATTR_PORT, CallCounts, endpoint_from_attributes, sdk_error,
};
use crate::backoff::Backoff;
use crate::error::DiscoveryError;
use crate::traits::Registry;
use crate::types::{Endpoint, Health, Registration};

/// Cloud Map allows at most this many attributes per instance.
pub const MAX_ATTRIBUTES: usize = 30;
const ATTR_INIT_HEALTH: &str = "AWS_INIT_HEALTH_STATUS";

/// Who registers instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationMode {
    /// Weft registers and deregisters its instances itself.
    SelfRegister,
    /// The platform does (ECS service registries): Weft only reports health,
    /// with the platform's instance id (the task id on ECS).
    External,
}

/// The control-plane side of the Cloud Map backend.
#[derive(Debug)]
pub struct CloudMapRegistry {
    client: Client,
    namespace: String,
    mode: RegistrationMode,
    operation_timeout: Duration,
    counts: Arc<CallCounts>,
    ids: Mutex<Ids>,
}

#[derive(Debug, Default)]
struct Ids {
    namespace: Option<String>,
    services: HashMap<String, String>,
}

impl CloudMapRegistry {
    /// A registry for `namespace` (its name).
    pub fn new(
        client: Client,
        namespace: String,
        mode: RegistrationMode,
        counts: Arc<CallCounts>,
    ) -> Self {
        Self {
            client,
            namespace,
            mode,
            operation_timeout: Duration::from_secs(60),
            counts,
            ids: Mutex::new(Ids::default()),
        }
    }

    /// Who registers instances.
    pub fn mode(&self) -> RegistrationMode {
        self.mode
    }

    /// Bounds the wait for each register or deregister operation.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    fn count(&self) {
        self.counts.control.fetch_add(1, Ordering::Relaxed);
    }

    /// The namespace's id, looked up once.
    pub async fn namespace_id(&self) -> Result<String, DiscoveryError> {
        let mut ids = self.ids.lock().await;
        if let Some(id) = &ids.namespace {
            return Ok(id.clone());
        }
        let mut pages = self.client.list_namespaces().into_paginator().send();
        while let Some(page) = pages.next().await {
            self.count();
            let page = page.map_err(sdk_error)?;
            if let Some(ns) = page
                .namespaces()
                .iter()
                .find(|n| n.name() == Some(self.namespace.as_str()))
                && let Some(id) = ns.id()
            {
                ids.namespace = Some(id.to_owned());
                return Ok(id.to_owned());
            }
        }
        Err(DiscoveryError::NotFound {
            kind: "namespace",
            name: self.namespace.clone(),
        })
    }

    /// A service's id in the namespace, looked up once per service (a
    /// listing remembers every id it sees).
    pub async fn service_id(&self, service: &str) -> Result<String, DiscoveryError> {
        if let Some(id) = self.ids.lock().await.services.get(service) {
            return Ok(id.clone());
        }
        let listed = self.namespace_services().await?;
        listed
            .into_iter()
            .find(|(name, _)| name == service)
            .map(|(_, id)| id)
            .ok_or_else(|| DiscoveryError::NotFound {
                kind: "service",
                name: format!("{}/{service}", self.namespace),
            })
    }

    /// The names of every service in the namespace, sorted: for operators'
    /// listings.
    pub async fn service_names(&self) -> Result<Vec<String>, DiscoveryError> {
        let mut names: Vec<String> = self
            .namespace_services()
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every service of the namespace as (name, id), page by page; the ids
    /// are remembered.
    async fn namespace_services(&self) -> Result<Vec<(String, String)>, DiscoveryError> {
        let namespace_id = self.namespace_id().await?;
        let filter = ServiceFilter::builder()
            .name(ServiceFilterName::NamespaceId)
            .values(namespace_id)
            .condition(FilterCondition::Eq)
            .build()
            .map_err(|e| DiscoveryError::Backend(e.to_string()))?;
        let mut pages = self
            .client
            .list_services()
            .filters(filter)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            self.count();
            let page = page.map_err(sdk_error)?;
            out.extend(
                page.services()
                    .iter()
                    .filter_map(|s| Some((s.name()?.to_owned(), s.id()?.to_owned()))),
            );
        }
        let mut ids = self.ids.lock().await;
        for (name, id) in &out {
            ids.services.insert(name.clone(), id.clone());
        }
        Ok(out)
    }

    /// Every instance registered in `service`, page by page, regardless of
    /// health (ListInstances does not report health): for operators' listings.
    pub async fn list_instances(&self, service: &str) -> Result<Vec<Endpoint>, DiscoveryError> {
        let service_id = self.service_id(service).await?;
        let mut pages = self
            .client
            .list_instances()
            .service_id(&service_id)
            .max_results(100)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            self.count();
            let page = page.map_err(sdk_error)?;
            for instance in page.instances() {
                let (Some(id), Some(attrs)) = (instance.id(), instance.attributes()) else {
                    continue;
                };
                if let Some(endpoint) = endpoint_from_attributes(id.to_owned(), attrs, true) {
                    out.push(endpoint);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Waits until an asynchronous operation succeeds or fails, within the
    /// configured bound.
    async fn wait_for(&self, what: &str, operation_id: &str) -> Result<(), DiscoveryError> {
        let deadline = tokio::time::Instant::now() + self.operation_timeout;
        let mut backoff =
            Backoff::new(Duration::from_millis(100), 1.6, Duration::from_secs(3), 0.2);
        loop {
            self.count();
            let out = self
                .client
                .get_operation()
                .operation_id(operation_id)
                .send()
                .await
                .map_err(sdk_error)?;
            match out.operation().and_then(|o| o.status()) {
                Some(OperationStatus::Success) => return Ok(()),
                Some(OperationStatus::Fail) => {
                    let reason = out
                        .operation()
                        .and_then(|o| o.error_message())
                        .unwrap_or("no reason given");
                    return Err(DiscoveryError::Backend(format!("{what} failed: {reason}")));
                }
                _ => {}
            }
            let delay = backoff.next_delay();
            if tokio::time::Instant::now() + delay > deadline {
                return Err(DiscoveryError::Timeout(format!(
                    "{what} (operation {operation_id})"
                )));
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// Checks a registration against Cloud Map's rules before calling it.
pub fn validate(registration: &Registration) -> Result<Vec<(String, String)>, DiscoveryError> {
    let invalid = |m: String| Err(DiscoveryError::InvalidRegistration(m));
    let id = &registration.id;
    if id.is_empty()
        || id.len() > 64
        || !id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b':' | b'.' | b'@')
        })
    {
        return invalid(format!(
            "instance id {id:?} must be 1 to 64 of [0-9a-zA-Z_/:.@-]"
        ));
    }
    let mut attributes: Vec<(String, String)> = Vec::new();
    let ip_key = if registration.addr.is_ipv4() {
        ATTR_IPV4
    } else {
        ATTR_IPV6
    };
    attributes.push((ip_key.into(), registration.addr.ip().to_string()));
    attributes.push((ATTR_PORT.into(), registration.addr.port().to_string()));
    if !registration.initially_healthy {
        attributes.push((ATTR_INIT_HEALTH.into(), "UNHEALTHY".into()));
    }
    for (k, v) in &registration.attributes {
        if k.starts_with("AWS_") {
            return invalid(format!(
                "attribute {k:?}: names starting with AWS_ are reserved"
            ));
        }
        if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| b.is_ascii_graphic()) {
            return invalid(format!(
                "attribute {k:?}: names are 1 to 255 printable characters"
            ));
        }
        if v.len() > 1024 || v.chars().any(char::is_control) {
            return invalid(format!(
                "attribute {k:?}: values are at most 1024 printable characters"
            ));
        }
        attributes.push((k.clone(), v.clone()));
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return invalid(format!(
            "{} attributes (including address, port and initial health); Cloud Map allows {MAX_ATTRIBUTES}",
            attributes.len()
        ));
    }
    Ok(attributes)
}

impl Registry for CloudMapRegistry {
    async fn register(&self, registration: &Registration) -> Result<(), DiscoveryError> {
        let attributes = validate(registration)?;
        if self.mode == RegistrationMode::External {
            tracing::info!(service = %registration.service, id = %registration.id, "registration is left to the platform");
            return Ok(());
        }
        let service_id = self.service_id(&registration.service).await?;
        self.count();
        let out = self
            .client
            .register_instance()
            .service_id(&service_id)
            .instance_id(&registration.id)
            // Makes the SDK's own retries of this call safe.
            .creator_request_id(format!("{}-{:016x}", registration.id, fastrand::u64(..)))
            .set_attributes(Some(attributes.into_iter().collect()))
            .send()
            .await
            .map_err(sdk_error)?;
        let operation = out.operation_id().ok_or_else(|| {
            DiscoveryError::Backend("RegisterInstance returned no operation id".into())
        })?;
        self.wait_for("RegisterInstance", operation).await
    }

    async fn set_health(
        &self,
        service: &str,
        id: &str,
        health: Health,
    ) -> Result<(), DiscoveryError> {
        let service_id = self.service_id(service).await?;
        self.count();
        self.client
            .update_instance_custom_health_status()
            .service_id(&service_id)
            .instance_id(id)
            .status(match health {
                Health::Healthy => CustomHealthStatus::Healthy,
                Health::Unhealthy => CustomHealthStatus::Unhealthy,
            })
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        if self.mode == RegistrationMode::External {
            return Ok(());
        }
        let service_id = self.service_id(service).await?;
        self.count();
        let out = self
            .client
            .deregister_instance()
            .service_id(&service_id)
            .instance_id(id)
            .send()
            .await
            .map_err(sdk_error)?;
        match out.operation_id() {
            Some(operation) => self.wait_for("DeregisterInstance", operation).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_checked_before_any_call() {
        let base = Registration::new("inventory", "task-1", "10.0.0.1:7001".parse().unwrap());
        let attrs = validate(&base.clone().with_attribute("version", "1.2")).unwrap();
        assert!(attrs.contains(&(ATTR_IPV4.into(), "10.0.0.1".into())));
        assert!(attrs.contains(&(ATTR_PORT.into(), "7001".into())));

        let mut full = base.clone();
        for i in 0..28 {
            full = full.with_attribute(format!("a{i}"), "v");
        }
        assert_eq!(validate(&full).unwrap().len(), 30);
        let too_many = full.with_attribute("one-more", "v");
        assert!(
            validate(&too_many)
                .unwrap_err()
                .to_string()
                .contains("allows 30")
        );

        assert!(validate(&base.clone().with_attribute("AWS_X", "v")).is_err());
        assert!(validate(&base.clone().with_attribute("k", "x".repeat(1025))).is_err());
        let mut bad_id = base;
        bad_id.id = "has space".into();
        assert!(validate(&bad_id).is_err());
    }
}
