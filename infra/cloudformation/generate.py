"""Renders weft.yaml from weft.yaml.j2: one definition of a Weft service
(its Cloud Map service, task role, task definition with its collector, ECS
service, autoscaling and alarms) used for every service listed here, plus
the collector's configuration (infra/collector.yaml) and the CloudWatch
dashboard, which is built here from the same list.

    python infra/cloudformation/generate.py          # writes weft.yaml
    python infra/cloudformation/generate.py --check  # fails if weft.yaml is stale

Needs Jinja2 (scripts/setup installs it).
"""

import json
import pathlib
import sys

import jinja2

HERE = pathlib.Path(__file__).resolve().parent
INFRA = HERE.parent

# The Weft services, in port order. `ingress`: reachable through the internal
# load balancer (one service per listener port; orders is the mesh's front).
SERVICES = [
    {"name": "inventory", "port": 7001, "ingress": False},
    {"name": "payments", "port": 7002, "ingress": False},
    {"name": "orders", "port": 7003, "ingress": True},
]
for _s in SERVICES:
    _s["Title"] = _s["name"].title()

# The service's metrics listener (/metrics, /ready): the collector in the
# task scrapes it over loopback (the task's containers share a network
# namespace), the ingress load balancer checks /ready on the task's address.
# The collector takes traces on loopback only.
METRICS_PORT = 9100
METRICS_LISTEN = f"0.0.0.0:{METRICS_PORT}"
METRICS_TARGET = f"127.0.0.1:{METRICS_PORT}"
OTLP_ENDPOINT = "http://127.0.0.1:4317"

# Codes that are the server's failure rather than an answer to the caller.
SERVER_ERROR_CODES = ["UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS"]

REGION = "${AWS::Region}"


def _search(dims, metric, service, stat, period=60, extra=""):
    keys = ",".join(["Weft"] + dims)
    return (f"SEARCH('{{{keys}}} MetricName=\"{metric}\" service=\"{service}\"{extra}', "
            f"'{stat}', {period})")


def _widget(title, metrics, x, y, w=6, h=6, stat=None, yaxis=None):
    props = {"title": title, "region": REGION, "view": "timeSeries", "stacked": False,
             "metrics": metrics, "period": 60}
    if stat:
        props["stat"] = stat
    if yaxis:
        props["yAxis"] = {"left": yaxis}
    return {"type": "metric", "x": x, "y": y, "width": w, "height": h, "properties": props}


def dashboard():
    """The CloudWatch dashboard: a row per service (golden signals, its
    clients, its pool and certificate, its tasks), then the database and
    every alarm. Returned as the JSON body for !Sub."""
    widgets = []
    y = 0
    widgets.append({"type": "text", "x": 0, "y": y, "width": 24, "height": 2, "properties": {
        "markdown": "## Weft (${AWS::StackName})\nCalls, failures by code, mean and worst call time per "
                    "service; what each service sees of its upstreams (answers by code, usable endpoints, "
                    "discovery staleness); database pool, certificate lifetime and tasks. Deployment "
                    "failures (the circuit breaker) go to the alarm topic as events."}})
    y += 2
    for s in SERVICES:
        n = s["name"]
        widgets.append({"type": "text", "x": 0, "y": y, "width": 24, "height": 1,
                        "properties": {"markdown": f"### {n}"}})
        y += 1
        widgets += [
            _widget(f"{n}: calls/min", [["Weft", "weft_server_requests_total", "service", n,
                                         {"stat": "Sum", "label": "calls"}]], 0, y),
            _widget(f"{n}: answers by code", [[{"expression": _search(["service", "grpc_code"],
                                                                      "weft_server_responses_total", n, "Sum"),
                                                "id": "codes", "label": ""}]], 6, y),
            _widget(f"{n}: call time (s)", [
                ["Weft", "weft_server_request_duration_seconds", "service", n, {"stat": "Average", "label": "mean"}],
                ["...", {"stat": "Maximum", "label": "max"}]], 12, y, yaxis={"min": 0}),
            _widget(f"{n}: tasks", [
                ["ECS/ContainerInsights", "RunningTaskCount", "ClusterName", "${Cluster}", "ServiceName", n,
                 {"stat": "Minimum", "label": "running"}],
                [".", "DesiredTaskCount", ".", ".", ".", ".", {"stat": "Maximum", "label": "desired"}]],
                18, y, yaxis={"min": 0}),
        ]
        y += 6
        widgets += [
            _widget(f"{n} -> upstreams: answers by code", [[{"expression": _search(
                ["service", "upstream", "grpc_code"], "weft_client_responses_total", n, "Sum"),
                "id": "up", "label": ""}]], 0, y),
            _widget(f"{n} -> upstreams: endpoints", [[{"expression": _search(
                ["service", "upstream", "state"], "weft_client_endpoints", n, "Minimum"),
                "id": "pool", "label": ""}]], 6, y, yaxis={"min": 0}),
            _widget(f"{n}: discovery staleness (s)", [[{"expression": _search(
                ["service", "upstream"], "weft_discovery_staleness_seconds", n, "Maximum"),
                "id": "stale", "label": ""}]], 12, y, w=4, yaxis={"min": 0}),
            _widget(f"{n}: database pool", [[{"expression": _search(
                ["service", "state"], "weft_db_pool_connections", n, "Maximum"),
                "id": "db", "label": ""}]], 16, y, w=4, yaxis={"min": 0}),
            _widget(f"{n}: certificate (days left)", [
                [{"expression": "m1 / 86400", "id": "days", "label": "days left"}],
                ["Weft", "weft_tls_certificate_expiry_seconds", "service", n,
                 {"stat": "Minimum", "id": "m1", "visible": False}]], 20, y, w=4, yaxis={"min": 0}),
        ]
        y += 6
    widgets.append({"type": "text", "x": 0, "y": y, "width": 24, "height": 1,
                    "properties": {"markdown": "### Database and alarms"}})
    y += 1
    rds = lambda metric, label: ["AWS/RDS", metric, "DBInstanceIdentifier", "${Database}",  # noqa: E731
                                 {"label": label}]
    widgets += [
        _widget("database CPU (%)", [rds("CPUUtilization", "cpu")], 0, y, stat="Average", yaxis={"min": 0, "max": 100}),
        _widget("database connections", [rds("DatabaseConnections", "connections")], 6, y, stat="Maximum"),
        _widget("database free storage (bytes)", [rds("FreeStorageSpace", "free")], 12, y, stat="Minimum"),
    ]
    alarms = ["${DatabaseCpuAlarm.Arn}", "${DatabaseStorageAlarm.Arn}", "${DatabaseConnectionsAlarm.Arn}"]
    for s in SERVICES:
        for kind in ("ErrorRate", "Latency", "TaskCount", "CertificateExpiry"):
            alarms.append(f"${{{s['Title']}{kind}Alarm.Arn}}")
    widgets.append({"type": "alarm", "x": 18, "y": y, "width": 6, "height": 6,
                    "properties": {"title": "alarms", "alarms": alarms}})
    # A widget a line: reviewable in weft.yaml's diffs without 2,000 lines.
    lines = ",\n".join(" " + json.dumps(w, separators=(",", ":")) for w in widgets)
    return '{"widgets": [\n' + lines + "\n]}"


def render():
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    collector = (INFRA / "collector.yaml").read_text().rstrip("\n")
    return env.get_template("weft.yaml.j2").render(
        services=SERVICES, collector=collector, dashboard=dashboard(), metrics_listen=METRICS_LISTEN,
        metrics_target=METRICS_TARGET, metrics_port=METRICS_PORT,
        otlp_endpoint=OTLP_ENDPOINT, server_error_codes=SERVER_ERROR_CODES)


def main(argv):
    out = HERE / "weft.yaml"
    text = render()
    if "--check" in argv:
        if out.read_text() != text:
            print(f"{out} is stale: run python infra/cloudformation/generate.py", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
