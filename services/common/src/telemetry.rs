//! Logs and traces for a service's binary: logs to standard error as text
//! or JSON (`WEFT_LOG_FORMAT`), each line carrying the trace id of the call
//! it belongs to; spans as OpenTelemetry traces, exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector (off otherwise: trace
//! context is still propagated so callers' traces continue).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use tracing::dispatcher::WeakDispatch;
use tracing_subscriber::Layer;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes and stops trace export when dropped (at the end of `main`).
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("trace export did not shut down cleanly: {e}");
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A setting has a value that is not understood.
    #[error("{name} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Installs logging (filter from `RUST_LOG`, default `info`) and tracing
/// for `service`.
pub fn init(service: &'static str) -> Result<Telemetry, TelemetryError> {
    let json = match std::env::var("WEFT_LOG_FORMAT").as_deref() {
        Err(_) | Ok("text") => false,
        Ok("json") => true,
        Ok(other) => {
            return Err(TelemetryError::Invalid {
                name: "WEFT_LOG_FORMAT",
                reason: format!("{other:?}: use text or json"),
            });
        }
    };
    let mut provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    if let Some(endpoint) = &endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let tracer = provider.tracer("weft");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (capture, format) = LineFormat::new(json);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .with(capture)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours for a terminal only: a log file (weft up's, a
                // container's) gets plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .event_format(format),
        )
        .init();
    if let Some(endpoint) = endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// One log line: time, level, target, the trace id when the event belongs
/// to a traced call, the current spans' names, and the event's fields.
#[derive(Debug, Clone)]
pub struct LineFormat {
    json: bool,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

/// Hands [`LineFormat`] the subscriber it runs in, which it needs to read
/// the trace a span belongs to (a formatter cannot ask for the current
/// dispatcher while an event is being dispatched).
#[derive(Debug, Clone)]
pub struct CaptureDispatch(Arc<OnceLock<WeakDispatch>>);

impl<S: Subscriber> Layer<S> for CaptureDispatch {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.0.set(subscriber.downgrade());
    }
}

/// The trace id of a span, once looked up.
struct TraceIdOf(Option<String>);

impl LineFormat {
    /// A format (JSON lines or text) and the layer to install with it.
    pub fn new(json: bool) -> (CaptureDispatch, Self) {
        let dispatch = Arc::new(OnceLock::new());
        (CaptureDispatch(dispatch.clone()), Self { json, dispatch })
    }

    /// The trace id of the event's innermost span, cached on the span.
    fn trace_id<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Option<String>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let span = ctx.lookup_current()?;
        if let Some(TraceIdOf(id)) = span.extensions().get::<TraceIdOf>() {
            return id.clone();
        }
        let dispatch = self.dispatch.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
        let context = cx.span().span_context().clone();
        let id = context.is_valid().then(|| context.trace_id().to_string());
        span.extensions_mut().insert(TraceIdOf(id.clone()));
        id
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // First, before any span data is borrowed for formatting.
        let trace_id = self.trace_id(ctx);
        let meta = event.metadata();
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        if self.json {
            let mut fields = JsonFields::default();
            event.record(&mut fields);
            let mut line = serde_json::Map::new();
            line.insert("time".into(), time.into());
            line.insert("level".into(), meta.level().as_str().into());
            line.insert("target".into(), meta.target().into());
            if let Some(id) = trace_id {
                line.insert("trace_id".into(), id.into());
            }
            if let Some(scope) = ctx.event_scope() {
                let spans: Vec<serde_json::Value> =
                    scope.from_root().map(|s| s.name().into()).collect();
                line.insert("spans".into(), spans.into());
            }
            line.insert("fields".into(), serde_json::Value::Object(fields.0));
            return writeln!(writer, "{}", serde_json::Value::Object(line));
        }
        write!(writer, "{time} {:>5} {}:", meta.level(), meta.target())?;
        if let Some(id) = trace_id {
            write!(writer, " trace_id={id}")?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, " {}", span.name())?;
            }
            write!(writer, ":")?;
        }
        write!(writer, " ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// An event's fields as JSON values.
#[derive(Default)]
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.0.insert(field.name().into(), text.into());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs one event inside a traced span and one outside, in `json` or
    /// text; returns the two lines and the span's trace id.
    fn two_lines(json: bool) -> (Vec<String>, String) {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let provider = SdkTracerProvider::builder().build();
        let (capture, format) = LineFormat::new(json);
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(capture)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || writer.clone())
                    .event_format(format),
            );
        let trace_id = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("grpc.server");
            let id = span.in_scope(|| {
                tracing::info!(code = 5, "call finished");
                weft_mesh::trace_context::trace_id(&tracing::Span::current())
            });
            tracing::warn!("outside any call");
            id
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        (
            text.lines().map(str::to_owned).collect(),
            trace_id.expect("the span has a trace id"),
        )
    }

    #[test]
    fn json_lines_carry_the_trace_id_of_their_call() {
        let (lines, trace_id) = two_lines(true);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let inside: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(inside["trace_id"], trace_id.as_str());
        assert_eq!(trace_id.len(), 32);
        assert_eq!(inside["level"], "INFO");
        assert_eq!(inside["fields"]["message"], "call finished");
        assert_eq!(inside["fields"]["code"], 5);
        assert_eq!(inside["spans"][0], "grpc.server");
        let outside: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert!(outside.get("trace_id").is_none(), "{outside}");
    }

    #[test]
    fn text_lines_carry_the_trace_id_of_their_call() {
        let (lines, trace_id) = two_lines(false);
        assert!(
            lines[0].contains(&format!("trace_id={trace_id}")),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("INFO") && lines[0].contains("call finished"));
        assert!(!lines[1].contains("trace_id="), "{}", lines[1]);
    }
}
