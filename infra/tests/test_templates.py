"""Invariants of Weft's CloudFormation templates, checked on the parsed
templates (cfn-lint's loader, which understands !Ref, !Sub and the rest):
least-privilege task roles, no secret in plain settings, encrypted and
managed database credentials, deployments that keep every instance serving,
stop timeouts longer than the drain, health checks through the binary, and
a Cloud Map service with custom health per Weft service.

Run: python -m unittest discover -s infra/tests (scripts/test does).
"""

import json
import pathlib
import re
import subprocess
import sys
import unittest

import yaml
from cfnlint.decode import decode

ROOT = pathlib.Path(__file__).resolve().parents[1] / "cloudformation"
COLLECTOR = ROOT.parent / "collector.yaml"
SERVICES = ("inventory", "payments", "orders")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_PEM$|_KEY$|CREDENTIAL", re.I)


def load(name):
    template, matches = decode(str(ROOT / name))
    assert not matches, matches
    return template


def of_type(template, kind):
    return {
        name: r.get("Properties", {})
        for name, r in template["Resources"].items()
        if r["Type"] == kind
    }


def env(container):
    return {e["Name"]: e["Value"] for e in container.get("Environment", [])}


def seconds(value_ms):
    return int(value_ms) / 1000


class WeftTemplate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.t = load("weft.yaml")

    def containers(self):
        """Each task definition's service container (the one its ECS
        service's registry names)."""
        for name, props in of_type(self.t, "AWS::ECS::TaskDefinition").items():
            for c in props["ContainerDefinitions"]:
                if c["Name"] in SERVICES:
                    yield name, props, c

    def sidecar(self, kind):
        """(task definition, service container, its `kind` container)."""
        for name, props in of_type(self.t, "AWS::ECS::TaskDefinition").items():
            (service,) = [c for c in props["ContainerDefinitions"] if c["Name"] in SERVICES]
            (other,) = [c for c in props["ContainerDefinitions"] if c["Name"] == kind]
            yield name, service, other

    def collectors(self):
        return self.sidecar("collector")

    def test_no_service_connects_as_the_master_user(self):
        master = "Database.MasterUserSecret.SecretArn"
        for name, service, bootstrap in self.sidecar("bootstrap"):
            svc = service["Name"]
            e = env(service)
            self.assertRegex(e["DATABASE_URL"]["Fn::Sub"], rf"^postgres://weft_{svc}@", name)
            self.assertEqual(e["WEFT_DB_MIGRATE_USER"], f"weft_{svc}_migrate", name)
            secrets = {x["Name"]: x["ValueFrom"]["Fn::Sub"] for x in service["Secrets"]}
            # The pool reads its password itself (and again after a rotation).
            self.assertEqual(e["WEFT_DB_PASSWORD_SECRET"], {"Ref": f"{svc.title()}DatabaseSecret"}, name)
            self.assertNotIn("DATABASE_PASSWORD", secrets, name)
            self.assertEqual(secrets["WEFT_DB_MIGRATE_PASSWORD"], f"${{{svc.title()}MigrateSecret}}:password::", name)
            self.assertFalse(any(master in v for v in secrets.values()), f"{name}: the service sees the master password")
            # Only the bootstrap, which runs to completion first, does.
            self.assertEqual(bootstrap["Command"], ["weft", "db", "bootstrap", "--service", svc], name)
            self.assertIs(bootstrap["Essential"], False, name)
            self.assertIn({"ContainerName": "bootstrap", "Condition": "SUCCESS"}, service["DependsOn"], name)
            boot = {x["Name"]: x["ValueFrom"]["Fn::Sub"] for x in bootstrap["Secrets"]}
            self.assertIn(master, boot["DATABASE_PASSWORD"], name)
            self.assertEqual(boot["WEFT_DB_SERVICE_PASSWORD"], f"${{{svc.title()}DatabaseSecret}}:password::", name)
            self.assertEqual(boot["WEFT_DB_MIGRATE_PASSWORD"], secrets["WEFT_DB_MIGRATE_PASSWORD"], name)
            for kind in ("Database", "Migrate"):
                generated = self.t["Resources"][f"{svc.title()}{kind}Secret"]["Properties"]["GenerateSecretString"]
                self.assertEqual(generated["GenerateStringKey"], "password")

    def test_the_template_is_generated_from_its_source(self):
        # One definition of a service, rendered three times: a hand edit of
        # weft.yaml (or a source change not rendered) fails here.
        out = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--check"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)

    def test_one_of_everything_per_service(self):
        discovery = of_type(self.t, "AWS::ServiceDiscovery::Service")
        self.assertEqual(sorted(p["Name"] for p in discovery.values()), sorted(SERVICES))
        for name, props in discovery.items():
            self.assertEqual(props["HealthCheckCustomConfig"]["FailureThreshold"], 1, name)
            self.assertEqual(props["NamespaceId"], {"Ref": "Namespace"}, name)
        self.assertEqual(len(of_type(self.t, "AWS::ServiceDiscovery::HttpNamespace")), 1)
        services = of_type(self.t, "AWS::ECS::Service")
        self.assertEqual(sorted(p["ServiceName"] for p in services.values()), sorted(SERVICES))
        # One per service, and one for the collectors' metric lines.
        self.assertEqual(len(of_type(self.t, "AWS::Logs::LogGroup")), 4)
        for name, props in of_type(self.t, "AWS::Logs::LogGroup").items():
            self.assertIn("RetentionInDays", props, name)

    def test_database_is_encrypted_with_managed_credentials(self):
        (db,) = of_type(self.t, "AWS::RDS::DBInstance").values()
        self.assertIs(db["StorageEncrypted"], True)
        self.assertIs(db["ManageMasterUserPassword"], True)
        self.assertNotIn("MasterUserPassword", db)
        self.assertEqual(db["MultiAZ"], {"Ref": "MultiAz"})
        self.assertIs(db["PubliclyAccessible"], False)
        # A parameter, off by default: a protected instance cannot be deleted,
        # so a failed first create would end in ROLLBACK_FAILED.
        self.assertEqual(db["DeletionProtection"], {"Ref": "DatabaseDeletionProtection"})
        self.assertEqual(self.t["Parameters"]["DatabaseDeletionProtection"]["Default"], "false")
        self.assertEqual(self.t["Resources"]["Database"]["DeletionPolicy"], "Snapshot")
        (params,) = of_type(self.t, "AWS::RDS::DBParameterGroup").values()
        self.assertEqual(params["Parameters"]["rds.force_ssl"], "1")

    def test_no_secret_in_plain_settings(self):
        for name, _, c in self.containers():
            for key, value in env(c).items():
                # Naming a secret (its ARN) is not holding one.
                names_a_secret = key.endswith("_SECRET") and isinstance(value, dict) \
                    and str(value.get("Ref", "")).endswith("Secret")
                if not names_a_secret:
                    self.assertIsNone(SECRET_NAME.search(key), f"{name}: {key} is plain")
                text = str(value)
                self.assertNotIn("BEGIN", text, f"{name}: {key} holds a PEM")
                if key == "DATABASE_URL":
                    # No password in the URL: postgres://user@host...; TLS required.
                    self.assertNotRegex(text, r"postgres://[^@/]*:[^@/]*@", name)
                    self.assertIn("sslmode=require", text, name)
            self.assertIn("WEFT_DB_CA", env(c), f"{name}: the database's certificate is verified")
            secrets = {s["Name"] for s in c.get("Secrets", [])}
            self.assertTrue(
                {"WEFT_DB_MIGRATE_PASSWORD", "WEFT_OPERATOR_CA_PEM"} <= secrets,
                f"{name}: {secrets}",
            )
        for name, props in self.t["Parameters"].items():
            if SECRET_NAME.search(name) and not name.endswith("Arn"):
                self.fail(f"parameter {name} would carry a secret")

    def test_deployments_never_drop_below_the_desired_count(self):
        for name, props in of_type(self.t, "AWS::ECS::Service").items():
            deployment = props["DeploymentConfiguration"]
            self.assertEqual(deployment["MinimumHealthyPercent"], 100, name)
            self.assertGreater(deployment["MaximumPercent"], 100, name)
            self.assertIs(deployment["DeploymentCircuitBreaker"]["Enable"], True, name)
            self.assertEqual(props["LaunchType"], "FARGATE", name)
            network = props["NetworkConfiguration"]["AwsvpcConfiguration"]
            self.assertEqual(network["AssignPublicIp"], "DISABLED", name)
        self.assertGreaterEqual(self.t["Parameters"]["DesiredCount"]["MinValue"], 2)

    def test_stop_timeout_outlasts_the_codes_own_bound_on_shutdown(self):
        # The server's worst case (DrainConfig::worst_case in weft-mesh):
        # telling discovery (bounded), the drain, then in-flight calls. Every
        # one of the three must be set here, not left to a default the
        # template cannot see; 5 s more for the process to exit.
        for name, props, c in self.containers():
            e = env(c)
            bound = sum(seconds(e[k]) for k in ("WEFT_DRAIN_NOTIFY_MS", "WEFT_DRAIN_MS", "WEFT_GRACE_MS"))
            self.assertGreaterEqual(c["StopTimeout"], bound + 5, name)
            self.assertLessEqual(c["StopTimeout"], 120, f"{name}: Fargate's most")
            command = c["HealthCheck"]["Command"]
            self.assertEqual(command[0], "CMD", name)
            self.assertEqual(command[-1], "health", name)
            self.assertIn(c["Command"][0], command, name)
            self.assertEqual(props["RequiresCompatibilities"], ["FARGATE"], name)
            self.assertEqual(c["LogConfiguration"]["LogDriver"], "awslogs", name)

    def test_every_task_follows_the_routes_parameter_which_starts_empty(self):
        param = of_type(self.t, "AWS::SSM::Parameter")["RoutesParameter"]
        self.assertEqual(param["Type"], "String")
        # Comments only: a table with no routes (TOML allows nothing else in it).
        self.assertTrue(all(line.startswith("#") or not line.strip() for line in param["Value"].splitlines()))
        followers = [name for name, _, c in self.containers()
                     if env(c).get("WEFT_ROUTES") == {"Fn::Sub": "ssm:${RoutesParameter}"}]
        self.assertEqual(len(followers), len(SERVICES), followers)

    def test_task_roles_are_least_privilege(self):
        roles = of_type(self.t, "AWS::IAM::Role")
        task_roles = {n: p for n, p in roles.items() if n.endswith("TaskRole")}
        self.assertEqual(len(task_roles), 3)
        # Actions that have no resource-level permissions, and only those, on "*".
        allowed_star = {
            ("servicediscovery:DiscoverInstances", "servicediscovery:DiscoverInstancesRevision"),
            ("servicediscovery:ListNamespaces", "servicediscovery:ListServices"),
            ("xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
             "xray:GetSamplingTargets"),
        }
        for name, props in task_roles.items():
            self.assertNotIn("ManagedPolicyArns", props, name)
            for policy in props["Policies"]:
                for st in policy["PolicyDocument"]["Statement"]:
                    actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                    self.assertEqual(st["Effect"], "Allow")
                    for a in actions:
                        self.assertTrue(
                            a.split(":")[0] in ("servicediscovery", "logs", "xray", "secretsmanager", "acm-pca", "ssm"),
                            f"{name}: {a}")
                        self.assertNotIn("*", a, f"{name}: {a}")
                    if st["Resource"] == "*":
                        self.assertIn(tuple(actions), allowed_star, f"{name}: {actions} on *")
                        if "DiscoverInstances" in actions[0]:
                            self.assertEqual(
                                st["Condition"]["StringEquals"]["servicediscovery:NamespaceName"],
                                {"Ref": "NamespaceName"},
                            )
                    elif actions[0].startswith("acm-pca:"):
                        own = {"Ref": name.replace("TaskRole", "CertificateAuthority")}
                        if actions == ["acm-pca:GetCertificateAuthorityCertificate"]:
                            # Every service's CA certificate: the trust bundle.
                            self.assertEqual(len(st["Resource"]), 3, name)
                        else:
                            # Issue from (and read back from) its own CA only,
                            # end-entity certificates only.
                            self.assertIn(actions, (["acm-pca:IssueCertificate"], ["acm-pca:GetCertificate"]), name)
                            self.assertEqual(st["Resource"], own, name)
                        if actions == ["acm-pca:IssueCertificate"]:
                            self.assertIn("EndEntityCertificate/V1", str(
                                st["Condition"]["StringEquals"]["acm-pca:TemplateArn"]), name)
                    elif actions[0].startswith("secretsmanager:"):
                        # Its own database password only.
                        self.assertEqual(actions, ["secretsmanager:GetSecretValue"], name)
                        self.assertEqual(st["Resource"], {"Ref": name.replace("TaskRole", "DatabaseSecret")}, name)
                    elif actions[0].startswith("ssm:"):
                        # The route table only, read only.
                        self.assertEqual(actions, ["ssm:GetParameter"], name)
                        self.assertIn("RoutesParameter", str(st["Resource"]), name)
                        self.assertNotIn("*", str(st["Resource"]), name)
                    elif actions[0].startswith("logs:"):
                        # The collectors' metrics log group only.
                        self.assertEqual(st["Resource"], {"Fn::GetAtt": ["MetricsLogGroup", "Arn"]}, name)
                        self.assertNotIn("logs:CreateLogGroup", actions, name)
                    else:
                        # Its own Cloud Map service only.
                        self.assertEqual(list(st["Resource"].keys()), ["Fn::GetAtt"], name)
                        self.assertEqual(
                            st["Resource"]["Fn::GetAtt"][0],
                            name.replace("TaskRole", "DiscoveryService"),
                        )
        execution = roles["ExecutionRole"]
        for policy in execution.get("Policies", []):
            for st in policy["PolicyDocument"]["Statement"]:
                self.assertNotEqual(st["Resource"], "*", "the execution role reads named secrets only")

    def test_ecs_owns_registration_so_no_instance_outlives_its_task(self):
        services = of_type(self.t, "AWS::ECS::Service")
        containers = {c["Name"]: (props, c) for _, props, c in self.containers()}
        for name, props in services.items():
            (registry,) = props["ServiceRegistries"]
            svc = props["ServiceName"]
            self.assertEqual(registry["RegistryArn"], {"Fn::GetAtt": [f"{svc.title()}DiscoveryService", "Arn"]})
            self.assertEqual(registry["ContainerName"], svc)
            _, c = containers[svc]
            self.assertEqual(registry["ContainerPort"], c["PortMappings"][0]["ContainerPort"])
            # ...and the task knows it: it only reports health.
            self.assertEqual(env(c)["WEFT_DISCOVERY"], {"Fn::Sub": "cloudmap://${NamespaceName}?registration=external"}, name)
        for name, props in of_type(self.t, "AWS::IAM::Role").items():
            for policy in props.get("Policies", []):
                for st in policy["PolicyDocument"]["Statement"]:
                    actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                    self.assertNotIn("servicediscovery:RegisterInstance", actions, name)
                    self.assertNotIn("servicediscovery:DeregisterInstance", actions, name)

    def test_orders_always_has_a_merchant_account(self):
        (orders,) = [c for _, _, c in self.containers() if c["Name"] == "orders"]
        value = env(orders)["WEFT_MERCHANT_ACCOUNT"]
        self.assertNotIn("unset", str(value))
        self.assertEqual(
            value, {"Fn::If": ["HasMerchant", {"Ref": "MerchantAccountId"}, {"Fn::Sub": "open:merchant:${MerchantCurrency}"}]}
        )

    def test_autoscaling_on_cpu_per_service(self):
        targets = of_type(self.t, "AWS::ApplicationAutoScaling::ScalableTarget")
        policies = of_type(self.t, "AWS::ApplicationAutoScaling::ScalingPolicy")
        self.assertEqual(len(targets), 3)
        self.assertEqual(len(policies), 3)
        for name, p in policies.items():
            config = p["TargetTrackingScalingPolicyConfiguration"]
            self.assertEqual(
                config["PredefinedMetricSpecification"]["PredefinedMetricType"],
                "ECSServiceAverageCPUUtilization",
                name,
            )
        for name, t in targets.items():
            self.assertEqual(t["MinCapacity"], {"Ref": "DesiredCount"}, name)

    # -- ingress

    def test_ingress_passes_mtls_through_to_orders_only_when_ready(self):
        (lb,) = of_type(self.t, "AWS::ElasticLoadBalancingV2::LoadBalancer").values()
        self.assertEqual((lb["Type"], lb["Scheme"]), ("network", "internal"))
        (listener,) = of_type(self.t, "AWS::ElasticLoadBalancingV2::Listener").values()
        # TCP: the load balancer never terminates TLS, so orders sees (and
        # authorizes) the caller's own certificate.
        self.assertEqual((listener["Protocol"], listener["Port"]), ("TCP", 443))
        (group_name,) = of_type(self.t, "AWS::ElasticLoadBalancingV2::TargetGroup")
        group = self.t["Resources"][group_name]["Properties"]
        self.assertEqual(listener["DefaultActions"], [{"Type": "forward", "TargetGroupArn": {"Ref": group_name}}])
        (orders,) = [p for p in of_type(self.t, "AWS::ECS::Service").values() if p["ServiceName"] == "orders"]
        (binding,) = orders["LoadBalancers"]
        (_, _, container) = [(n, p, c) for n, p, c in self.containers() if c["Name"] == "orders"][0]
        port = container["PortMappings"][0]["ContainerPort"]
        self.assertEqual(binding, {"TargetGroupArn": {"Ref": group_name}, "ContainerName": "orders", "ContainerPort": port})
        self.assertEqual((group["TargetType"], group["Protocol"], group["Port"]), ("ip", "TCP", port))
        # Health: readiness on the metrics listener, not a bare TCP connect.
        metrics_port = env(container)["WEFT_METRICS_ADDR"].rsplit(":", 1)[1]
        self.assertEqual((group["HealthCheckProtocol"], str(group["HealthCheckPort"]), group["HealthCheckPath"]),
                         ("HTTP", metrics_port, "/ready"))
        attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
        delay = int(attributes["deregistration_delay.timeout_seconds"])
        # ECS waits out the delay before SIGTERM: keep it short of the stop timeout.
        self.assertLess(delay, container["StopTimeout"])
        for other in (p for p in of_type(self.t, "AWS::ECS::Service").values() if p["ServiceName"] != "orders"):
            self.assertNotIn("LoadBalancers", other)
        # Reachable from IngressCidr on 443; tasks take the balancer's traffic
        # on the gRPC port and its health checks on the metrics port, nothing else.
        (sg,) = [p for n, p in of_type(self.t, "AWS::EC2::SecurityGroup").items() if n == "IngressSecurityGroup"]
        self.assertEqual([(r["FromPort"], r["CidrIp"]) for r in sg["SecurityGroupIngress"]], [(443, {"Ref": "IngressCidr"})])
        from_ingress = sorted(p["FromPort"] for p in of_type(self.t, "AWS::EC2::SecurityGroupIngress").values()
                              if p.get("SourceSecurityGroupId") == {"Ref": "IngressSecurityGroup"})
        self.assertEqual(from_ingress, sorted([port, int(metrics_port)]))
        self.assertIn("IngressAddress", self.t["Outputs"])
        self.assertEqual(self.t["Outputs"]["IngressServerName"]["Value"], {"Fn::Sub": "orders.${NamespaceName}"})

    # -- telemetry

    def collector_config(self):
        param = of_type(self.t, "AWS::SSM::Parameter")["CollectorConfig"]
        self.assertEqual(param["Value"].strip(), COLLECTOR.read_text().strip(), "the SSM parameter is infra/collector.yaml")
        return yaml.safe_load(param["Value"])

    def test_the_collector_reads_the_services_metrics_and_takes_its_traces(self):
        config = self.collector_config()
        read = set(re.findall(r"\$\{env:([A-Za-z_]+)\}", COLLECTOR.read_text()))
        otlp = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        for name, service, collector in self.collectors():
            self.assertIs(collector["Essential"], False, f"{name}: a collector failure must not stop the service")
            self.assertIn({"ContainerName": "collector", "Condition": "START"}, service["DependsOn"], name)
            secrets = {x["Name"]: x["ValueFrom"] for x in collector["Secrets"]}
            self.assertIn("CollectorConfig", str(secrets["AOT_CONFIG_CONTENT"]), name)
            e = env(collector)
            self.assertEqual(read - {"WEFT_METRICS_LOG_GROUP"} - set(e), set(), f"{name}: unset ${{env:...}}")
            self.assertEqual(e["WEFT_SERVICE"], service["Name"], name)
            # The scrape target is the service's metrics port, on loopback.
            listen = env(service)["WEFT_METRICS_ADDR"]
            self.assertEqual(e["WEFT_METRICS_TARGET"], "127.0.0.1:" + listen.rsplit(":", 1)[1], name)
            self.assertEqual(env(service)["OTEL_EXPORTER_OTLP_ENDPOINT"], f"http://{otlp}", name)
            self.assertEqual(e["WEFT_METRICS_LOG_GROUP"], {"Ref": "MetricsLogGroup"}, name)
        self.assertEqual(config["exporters"]["awsemf"]["namespace"], "Weft")
        pipelines = config["service"]["pipelines"]
        self.assertEqual(pipelines["metrics"]["exporters"], ["awsemf"])
        self.assertEqual(pipelines["traces"]["exporters"], ["awsxray"])
        # The execution role reads this parameter and no other.
        (execution,) = [p for n, p in of_type(self.t, "AWS::IAM::Role").items() if n == "ExecutionRole"]
        statements = [st for pol in execution["Policies"] for st in pol["PolicyDocument"]["Statement"]]
        (ssm,) = [st for st in statements if st["Action"] == "ssm:GetParameters"]
        self.assertIn("${CollectorConfig}", ssm["Resource"]["Fn::Sub"])

    def declared(self):
        """(metric, dimension set) pairs the collector sends to CloudWatch."""
        out = set()
        for d in self.collector_config()["exporters"]["awsemf"]["metric_declarations"]:
            for selector in d["metric_name_selectors"]:
                self.assertRegex(selector, r"^\^[a-z_]+\$$", "selectors name one metric each")
                for dims in d["dimensions"]:
                    out.add((selector[1:-1], frozenset(dims)))
        return out

    def test_alarms_and_the_dashboard_read_only_what_the_collector_sends(self):
        declared = self.declared()
        used = set()
        for name, alarm in of_type(self.t, "AWS::CloudWatch::Alarm").items():
            stats = [m["MetricStat"]["Metric"] for m in alarm.get("Metrics", []) if "MetricStat" in m]
            if "MetricName" in alarm:
                stats.append(alarm)
            for m in stats:
                if m["Namespace"] == "Weft":
                    used.add((m["MetricName"], frozenset(d["Name"] for d in m["Dimensions"])))
        body = self.t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        widgets = json.loads(body)["widgets"]
        for w in widgets:
            for row in w["properties"].get("metrics", []):
                if row and row[0] == "Weft":
                    names = [x for x in row[1:] if isinstance(x, str)]
                    used.add((names[0], frozenset(names[1::2])))
                for item in row:
                    if isinstance(item, dict) and "SEARCH(" in item.get("expression", ""):
                        m = re.search(r"\{Weft,([a-z_,]+)\} MetricName=\"([a-z_]+)\"", item["expression"])
                        used.add((m.group(2), frozenset(m.group(1).split(","))))
        self.assertTrue(used)
        self.assertEqual(used - declared, set(), "read but never sent to CloudWatch")

    def test_every_service_is_alarmed_and_so_are_the_database_and_deployments(self):
        alarms = of_type(self.t, "AWS::CloudWatch::Alarm")
        for s in SERVICES:
            for kind in ("ErrorRate", "Latency", "TaskCount", "CertificateExpiry"):
                self.assertIn(f"{s.title()}{kind}Alarm", alarms)
        for kind in ("Cpu", "Storage", "Connections"):
            self.assertIn(f"Database{kind}Alarm", alarms)
        for name, alarm in alarms.items():
            self.assertEqual(alarm["AlarmActions"], [{"Ref": "AlarmTopic"}], name)
        (rule,) = of_type(self.t, "AWS::Events::Rule").values()
        self.assertEqual(rule["EventPattern"]["detail"]["eventName"], ["SERVICE_DEPLOYMENT_FAILED"])
        self.assertEqual(rule["Targets"][0]["Arn"], {"Ref": "AlarmTopic"})
        # Every alarm is on the dashboard.
        body = self.t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        (panel,) = [w for w in json.loads(body)["widgets"] if w["type"] == "alarm"]
        self.assertEqual(sorted(panel["properties"]["alarms"]), sorted(f"${{{n}.Arn}}" for n in alarms))


class NetworkTemplate(unittest.TestCase):
    def test_private_subnets_in_two_zones(self):
        t = load("network.yaml")
        subnets = of_type(t, "AWS::EC2::Subnet")
        private = [p for n, p in subnets.items() if n.startswith("PrivateSubnet")]
        self.assertEqual(len(private), 2)
        zones = {str(p["AvailabilityZone"]) for p in private}
        self.assertEqual(len(zones), 2)
        self.assertIn("PrivateSubnetIds", t["Outputs"])

    def test_no_zone_depends_on_another(self):
        t = load("network.yaml")
        nats = of_type(t, "AWS::EC2::NatGateway")
        self.assertEqual(sorted(str(p["SubnetId"]) for p in nats.values()),
                         sorted(str({"Ref": f"PublicSubnet{z}"}) for z in "AB"))
        routes = of_type(t, "AWS::EC2::SubnetRouteTableAssociation")
        private = {p["SubnetId"]["Ref"]: p["RouteTableId"]["Ref"] for p in routes.values()
                   if p["SubnetId"]["Ref"].startswith("PrivateSubnet")}
        self.assertEqual(len(set(private.values())), 2, "each private subnet has its own route table")
        endpoints = {str(p["ServiceName"]) for p in of_type(t, "AWS::EC2::VPCEndpoint").values()}
        for service in ("ecr.api", "ecr.dkr", "s3", "servicediscovery", "secretsmanager", "logs", "ssm", "xray"):
            self.assertTrue(any(e.endswith(f".{service}'}}") or e.endswith(f".{service}") for e in endpoints), service)


if __name__ == "__main__":
    unittest.main()
