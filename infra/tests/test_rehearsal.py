"""The AWS deployment, rehearsed as ECS would run it (see rehearsal.py):
every service started from its task definition with the template's command,
environment, secrets, role and health check, against Cloud Map, Secrets
Manager, IAM and STS on the moto server and a PostgreSQL that requires TLS
as RDS does. Checks that:

- every task starts and passes its container health check, with the
  development CA path of docs/deploy.md and a trust domain of the stack's own;
- grpcurl and the Python SDK reach orders through the internal load
  balancer over mTLS with the commands docs/deploy.md gives, and a caller
  without a certificate does not;
- the merchant account is settled by orders itself, and orders confirm;
- a rolling deployment of every service under steady load fails no call;
- a task killed with SIGKILL leaves no instance registered;
- a 30 s database outage fails no container health check, while calls that
  need the database answer UNAVAILABLE and recover by themselves;
- rotating every service's database password while orders flow, then ending
  every connection, fails no call: the pools read the new password;
- a task stops within its stopTimeout even with Cloud Map unresponsive;
- each task's bootstrap container makes its service's database roles, and
  every service connects as its own role, which cannot read another's schema;
- each task's metrics hold every series the collector's configuration sends
  to CloudWatch, with the dimensions it declares, and its traces reach the
  collector's endpoint;
- every AWS call a task (or the agent, with the execution role) made is
  allowed by its role's policy, and removing a needed action is caught.

Figures are printed as `[rehearsal] ...` lines.
"""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import unittest
import uuid

import iam
import rehearsal
from rehearsal import Cluster, tempdir, wait_for, weft

TRUST_DOMAIN = "rehearsal.weft.example"


def figure(text):
    print(f"[rehearsal] {text}", flush=True)


class Rehearsal(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.began = time.monotonic()
        cls.root = tempdir()
        cls.cluster = None
        try:
            cls._bring_up()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _bring_up(cls):
        root = cls.root
        # docs/deploy.md's operator CA: made locally for the stack's trust
        # domain; the tasks trust it for operator identities only and get
        # their own certificates from the template's Private CAs.
        certs = root / "certs"
        weft("certs", "init", "--dir", str(certs), "--trust-domain", TRUST_DOMAIN)
        secrets = {"OperatorCaSecretArn": {"ca": (certs / "ca.pem").read_text()}}
        # Clients of the ingress check orders' certificate against this name.
        namespace = rehearsal.load_template()["Parameters"]["NamespaceName"]["Default"]
        cls.ingress_name = f"orders.{namespace}"
        weft("certs", "issue", "--dir", str(certs), "--operator", "admin")
        cls.certs = certs
        cluster = Cluster(root, {"TrustDomain": TRUST_DOMAIN, "VpcId": "vpc-1", "PrivateSubnetIds": ["s-1", "s-2"],
                                 "ImageUri": "weft:rehearsal"})
        cls.cluster = cluster
        cluster.create(secrets)
        # What scripts/deploy writes for operators: the services' CAs, which
        # `weft` and clients of the ingress verify the services against.
        (certs / "mesh-ca.pem").write_text("".join(
            cluster.ca_certificate(f"{s.title()}CertificateAuthority").strip() + "\n"
            for s in ("inventory", "payments", "orders")))
        # ECS starts each service's desired count at once, all services together.
        desired = int(cluster.parameters["DesiredCount"])
        tasks = [cluster.start_task(s) for s in cluster.services.values() for _ in range(desired)]
        for task in tasks:
            cluster.wait_healthy(task)
        cls.operator_env = dict(
            os.environ, WEFT_DISCOVERY=f"cloudmap://{cluster.namespace}", WEFT_CERTS_DIR=str(certs),
            WEFT_OPERATOR="admin", AWS_ENDPOINT_URL=cluster.moto.url, AWS_ACCESS_KEY_ID="operator",
            AWS_SECRET_ACCESS_KEY="operator", AWS_REGION=rehearsal.REGION, RUST_LOG="warn")
        cls._seed()
        order = cls.place_order("first")
        cls.first_order_s = time.monotonic() - cls.began
        assert order["status"] == "ORDER_STATUS_CONFIRMED", order
        figure(f"clean start to first confirmed order: {cls.first_order_s:.1f} s")

    @classmethod
    def call(cls, target, data, check=True):
        out = weft("call", target, "-d", json.dumps(data), env=cls.operator_env, check=check)
        return json.loads(out.stdout) if out.returncode == 0 else out

    @classmethod
    def _seed(cls):
        def until_served(target, data):
            # The operator's first calls can race the first health reports.
            last = []

            def attempt():
                r = cls.call(target, data, check=False)
                last[:] = [r]
                return r if isinstance(r, dict) else None
            try:
                return wait_for(target, attempt, 60, every=1)
            except AssertionError as e:
                raise AssertionError(f"{e}; last answer: {getattr(last[0], 'stderr', last[0])[-2000:]}") from None

        for sku in ("WIDGET-1", "GADGET-1"):
            until_served("inventory/CreateProduct", {
                "idempotencyKey": f"seed-{sku}", "sku": sku, "name": sku,
                "unitPrice": {"amountMinor": "100", "currencyCode": "USD"}, "initialStock": "100000"})
        account = until_served("payments/OpenAccount", {
            "idempotencyKey": "seed-alice", "owner": "alice", "currencyCode": "USD"})["account"]["accountId"]
        until_served("payments/Deposit", {"idempotencyKey": "seed-alice-deposit", "accountId": account,
                                          "amount": {"amountMinor": "100000000", "currencyCode": "USD"}})
        cls.account = account

    @classmethod
    def place_order(cls, key):
        return cls.call("orders/PlaceOrder", {
            "idempotencyKey": f"order-{key}", "customerId": "alice", "paymentAccountId": cls.account,
            "lines": [{"sku": "WIDGET-1", "quantity": "1"}]})["order"]

    @classmethod
    def tearDownClass(cls):
        if cls.cluster:
            cls.cluster.close()
        figure(f"rehearsal wall time: {time.monotonic() - cls.began:.1f} s")

    def start_load(self):
        env = dict(self.operator_env, WEFT_LOAD_ACCOUNT=self.account, WEFT_LOAD_RATE="10",
                   WEFT_LOAD_SKUS="WIDGET-1,GADGET-1")
        return subprocess.Popen([str(rehearsal.binaries_dir() / "weft"), "load"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop_load(self, load):
        load.send_signal(signal.SIGINT)
        _, err = load.communicate(timeout=60)
        done = [line for line in err.splitlines() if line.startswith("[load] done")]
        self.assertTrue(done, err[-2000:])
        return done[-1], err

    # -- through the ingress load balancer, as docs/deploy.md says to call it

    def ingress(self):
        (group,) = self.cluster.load_balancers
        return self.cluster.load_balancers[group].address

    def grpcurl(self, *args, client_cert=True):
        certs = self.certs
        tls = ["-cacert", str(certs / "mesh-ca.pem")]
        if client_cert:
            tls += ["-cert", str(certs / "operator-admin.pem"), "-key", str(certs / "operator-admin.key")]
        return subprocess.run([shutil.which("grpcurl") or "grpcurl", *tls, "-authority", self.ingress_name,
                               *args], capture_output=True, text=True, timeout=30)

    def sdk_orders(self):
        sys.path.insert(0, str(rehearsal.REPO / "sdk" / "python" / "src"))
        import weft_sdk
        from weft.orders.v1 import orders_pb2, orders_pb2_grpc

        channel = weft_sdk.channel(self.ingress(), certs=str(self.certs), operator="admin",
                                   server_name=self.ingress_name, ca=str(self.certs / "mesh-ca.pem"))
        return channel, orders_pb2_grpc.OrdersServiceStub(channel), orders_pb2

    def sdk_load(self, stop, outcome):
        """Orders placed through the ingress over one channel (one HTTP/2
        connection through the load balancer, as an SDK client keeps)."""
        import grpc

        channel, orders, pb = self.sdk_orders()
        try:
            while not stop.is_set():
                try:
                    order = orders.PlaceOrder(pb.PlaceOrderRequest(
                        idempotency_key=f"sdk-{uuid.uuid4()}", customer_id="sdk", payment_account_id=self.account,
                        lines=[pb.OrderLineRequest(sku="GADGET-1", quantity=1)]), timeout=30).order
                    outcome["confirmed" if order.status == pb.ORDER_STATUS_CONFIRMED else "other"] += 1
                except grpc.RpcError as e:
                    outcome["errors"].append(f"{e.code().name}: {e.details()}")
                time.sleep(0.2)
        finally:
            channel.close()

    # The tests run in name order, each on the cluster the last left.

    def test_0_grpcurl_and_the_sdk_reach_orders_through_the_ingress(self):
        listed = self.grpcurl(self.ingress(), "list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("weft.orders.v1.OrdersService", listed.stdout.split())
        placed = self.grpcurl("-d", json.dumps({
            "idempotency_key": "grpcurl-1", "customer_id": "grpcurl", "payment_account_id": self.account,
            "lines": [{"sku": "WIDGET-1", "quantity": 1}]}), self.ingress(), "weft.orders.v1.OrdersService/PlaceOrder")
        self.assertEqual(placed.returncode, 0, placed.stderr)
        self.assertEqual(json.loads(placed.stdout)["order"]["status"], "ORDER_STATUS_CONFIRMED")
        # mTLS end to end: the load balancer does not let a caller without a
        # certificate of the mesh's CA in.
        anonymous = self.grpcurl(self.ingress(), "list", client_cert=False)
        self.assertNotEqual(anonymous.returncode, 0, anonymous.stdout)
        channel, orders, pb = self.sdk_orders()
        with channel:
            listed = orders.ListOrders(pb.ListOrdersRequest(customer_id="grpcurl"), timeout=10).orders
        self.assertEqual([o.status for o in listed], [pb.ORDER_STATUS_CONFIRMED])
        figure(f"ingress: grpcurl and the Python SDK reach orders through the load balancer at {self.ingress()} "
               f"verifying {self.ingress_name}")

    def test_1_rolling_deployment_under_load_fails_no_call(self):
        load = self.start_load()
        stop, outcome = threading.Event(), {"confirmed": 0, "other": 0, "errors": []}
        sdk = threading.Thread(target=self.sdk_load, args=(stop, outcome))
        sdk.start()
        time.sleep(3)
        stops = []
        try:
            for service in self.cluster.services.values():
                for old in list(service.tasks):
                    new = self.cluster.start_task(service)
                    self.cluster.wait_healthy(new)
                    stops.append(self.cluster.stop_task(old))
            time.sleep(2)
        finally:
            stop.set()
            sdk.join()
        done, err = self.stop_load(load)
        figure(f"rolling deployment of every service under load: {done}; slowest stop {max(stops):.1f} s")
        figure(f"the same through the ingress (Python SDK, one channel): {outcome['confirmed']} confirmed, "
               f"{outcome['other']} not confirmed, {len(outcome['errors'])} errors")
        reasons = "\n".join(line for line in err.splitlines() if "not confirmed" in line)
        self.assertRegex(done, r", 0 errors$", reasons or err[-3000:])
        # A deployment is invisible to the orders themselves, too: none is
        # rejected because a service on its path was stopping.
        self.assertRegex(done, r" 0 rejected,", reasons)
        self.assertNotRegex(done, r" 0 confirmed", "the load placed orders")
        # A stop takes the drain period and the calls in flight (none here
        # lasts a second), not the grace period: nothing that never ends by
        # itself (a health watch) holds the shutdown.
        container = next(iter(self.cluster.services.values())).container
        drain = int(next(e["Value"] for e in container["Environment"] if e["Name"] == "WEFT_DRAIN_MS")) / 1000
        self.assertLess(max(stops), drain + 3, f"stops took {sorted(round(x, 1) for x in stops)} s")
        self.assertEqual(outcome["errors"], [], "calls through the ingress failed during the deployment")
        self.assertEqual(outcome["other"], 0)
        self.assertGreater(outcome["confirmed"], 0)

    def test_2_a_killed_task_leaves_no_registered_instance(self):
        service = self.cluster.services["inventory"]
        victim = service.tasks[0]
        self.assertIn(victim.task_id, self.cluster.instances("inventory"))
        victim.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_for("the agent to notice", lambda: (self.cluster.reap(), victim not in service.tasks)[1], 30)
        wait_for("the instance to go", lambda: victim.task_id not in self.cluster.instances("inventory"), 30)
        gone = time.monotonic() - killed
        figure(f"a SIGKILLed task's instance gone from Cloud Map after {gone:.2f} s")
        self.cluster.wait_healthy(self.cluster.start_task(service))

    def test_3_a_database_outage_fails_no_container_health_check(self):
        cluster = self.cluster
        tasks = [t for s in cluster.services.values() for t in s.tasks]
        cluster.rds.stop()
        down = time.monotonic()
        failed_checks, unavailable = [], False
        try:
            while time.monotonic() - down < 30:
                for t in tasks:
                    if not t.health_check():
                        failed_checks.append(t.service.name)
                if not unavailable:
                    out = self.call("inventory/GetProduct", {"sku": "WIDGET-1"}, check=False)
                    unavailable = not isinstance(out, dict) and "Unavailable" in out.stderr
                time.sleep(2)
        finally:
            cluster.rds.start()
        self.assertEqual(failed_checks, [], "container health checks failed during the outage")
        self.assertTrue(unavailable, "database work answers UNAVAILABLE while the database is away")
        self.assertTrue(all(t.alive() for t in tasks))
        back = time.monotonic()
        order = wait_for("an order after the outage", lambda: (lambda o: o if o.get("status") == "ORDER_STATUS_CONFIRMED" else None)(
            self.place_order(f"after-outage-{time.monotonic()}")), 60, every=1)
        figure(f"30 s database outage: 0 container health checks failed; orders confirm again "
               f"{time.monotonic() - back:.1f} s after it is back")
        self.assertEqual(order["status"], "ORDER_STATUS_CONFIRMED")

    def test_3b_rotating_the_services_database_passwords_fails_no_call(self):
        """Secrets Manager's single-user rotation of every service's role
        password while orders flow (the new version AWSPENDING, the role's
        password changed, then AWSCURRENT), then every service connection
        ended so that the pools open new ones, which must find the new
        password themselves."""
        cluster, rds = self.cluster, self.cluster.rds
        sm = cluster.moto.client("secretsmanager")
        load = self.start_load()
        time.sleep(2)
        began = self.psql(rds.user, rds.password, "SELECT now()").stdout.strip()
        passwords = {}
        for svc in ("inventory", "payments", "orders"):
            arn = cluster.refs[f"{svc.title()}DatabaseSecret"]
            versions = sm.list_secret_version_ids(SecretId=arn)["Versions"]
            (current,) = [v["VersionId"] for v in versions if "AWSCURRENT" in v.get("VersionStages", [])]
            value = json.loads(sm.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")["SecretString"])
            value["password"] = uuid.uuid4().hex
            pending = sm.put_secret_value(SecretId=arn, SecretString=json.dumps(value),
                                          VersionStages=["AWSPENDING"])["VersionId"]
            changed = self.psql(rds.user, rds.password, f"ALTER ROLE weft_{svc} PASSWORD '{value['password']}'")
            self.assertEqual(changed.returncode, 0, changed.stderr)
            time.sleep(1)  # new connections now meet the new password with the old one current
            sm.update_secret_version_stage(SecretId=arn, VersionStage="AWSCURRENT", MoveToVersionId=pending,
                                           RemoveFromVersionId=current)
            passwords[svc] = value["password"]
        time.sleep(2)
        during, err = self.stop_load(load)
        self.assertRegex(during, r" 0 rejected, 0 errors$", err[-3000:])
        # Every service connection ends; the pools open new ones.
        ended = self.psql(rds.user, rds.password,
                          "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                          "WHERE usename IN ('weft_inventory', 'weft_payments', 'weft_orders')")
        self.assertEqual(ended.returncode, 0, ended.stderr)
        time.sleep(1)
        load = self.start_load()
        time.sleep(6)
        after, err = self.stop_load(load)
        self.assertRegex(after, r" 0 rejected, 0 errors$", err[-3000:])
        self.assertNotRegex(after, r" 0 confirmed")
        fresh = self.psql(rds.user, rds.password,
                          f"SELECT DISTINCT usename FROM pg_stat_activity WHERE backend_start > '{began}' "
                          "AND usename LIKE 'weft\\_%'")
        self.assertEqual(set(fresh.stdout.split()), {"weft_inventory", "weft_payments", "weft_orders"},
                         "every service opened connections since the rotation")
        for svc, password in passwords.items():
            self.assertEqual(self.psql(f"weft_{svc}", password, "SELECT 1").returncode, 0)
            current = sm.get_secret_value(SecretId=cluster.refs[f"{svc.title()}DatabaseSecret"],
                                          VersionStage="AWSCURRENT")["SecretString"]
            self.assertEqual(json.loads(current)["password"], password)
        figure(f"database password rotation of every service under load: {during}; "
               f"after ending every connection ({ended.stdout.strip()} ended): {after}")

    def test_4_a_task_stops_within_its_stop_timeout_with_cloud_map_unresponsive(self):
        cluster = self.cluster
        service = cluster.services["payments"]
        cluster.wait_healthy(cluster.start_task(service))
        task = service.tasks[0]
        cluster.deregister(task)
        cluster.moto.proc.send_signal(signal.SIGSTOP)
        try:
            took = task.stop()
        finally:
            cluster.moto.proc.send_signal(signal.SIGCONT)
        service.tasks.remove(task)
        task.close()
        figure(f"SIGTERM to exit with Cloud Map unresponsive: {took:.1f} s (stopTimeout {task.container['StopTimeout']} s)")
        self.assertLess(took, task.container["StopTimeout"])

    def test_4a_metrics_and_traces_reach_the_tasks_collector(self):
        """What the collector sends to CloudWatch exists: every series its
        metric_declarations select is in some task's metrics, carrying the
        dimensions declared for it; every task's traces reach the
        collector's OTLP endpoint."""
        self.place_order(f"telemetry-{time.monotonic()}")
        series = []  # (service, collector-side name, labels)
        families = set()  # as the collector names them
        expiry = {}
        for service in self.cluster.services.values():
            for task in service.tasks:
                (collector,) = task.collectors
                for added, text in collector.scrape():
                    self.assertEqual(added.get("service"), service.name, "the scrape labels the service")
                    for line in text.splitlines():
                        if line.startswith("# TYPE "):
                            _, _, family, kind = line.split(" ", 3)
                            families.add(family + "_total" if kind == "counter" else family)
                    for name, labels in prometheus_series(text):
                        series.append((service.name, name, dict(labels, **added)))
                        if name == "weft_tls_certificate_expiry_seconds":
                            expiry[service.name] = float(labels["__value__"])
        (declarations,) = {json.dumps(t.collectors[0].config["exporters"]["awsemf"]["metric_declarations"])
                           for s in self.cluster.services.values() for t in s.tasks}
        declarations = json.loads(declarations)
        for declaration in declarations:
            for selector in declaration["metric_name_selectors"]:
                hits = [(svc, labels) for svc, name, labels in series if re.search(selector, name)]
                # Retries are counted per method, so their series appear with
                # the first retry (which a quiet mesh may not have made).
                if "retries" in selector and not hits:
                    continue
                self.assertTrue(hits, f"no task exports a series {selector} selects: {sorted(families)}")
                for dims in declaration["dimensions"]:
                    self.assertTrue(any(all(d in labels for d in dims) for _, labels in hits),
                                    f"{selector}: no series carries the dimensions {dims}")
        for service in self.cluster.services:
            self.assertIn(service, expiry, f"{service} reports its certificate's expiry")
            # Private CA, for the template's CertificateLifetimeSeconds.
            lifetime = int(self.cluster.parameters["CertificateLifetimeSeconds"])
            self.assertTrue(lifetime - 600 < expiry[service] <= lifetime, expiry)
        # Traces: each task exported to the collector in its own task. A
        # task exports only once it has served a call, and one order reaches
        # one task of each service: a task started by an earlier test may
        # have served none yet, so orders keep coming while waiting.
        tasks = [(s.name, t) for s in self.cluster.services.values() for t in s.tasks]

        def every_task_exported():
            if all(t.collectors[0].exports for _, t in tasks):
                return True
            self.place_order(f"telemetry-{time.monotonic()}")
            return False

        wait_for("every task's traces at its collector", every_task_exported, 60, every=1)
        for name, task in tasks:
            self.assertTrue(any(name.encode() in e for e in task.collectors[0].exports), name)
        figure(f"telemetry: {len(series)} series scraped across {sum(len(s.tasks) for s in self.cluster.services.values())} "
               f"tasks hold every series the collector sends to CloudWatch; every task's traces reached its collector")

    def psql(self, user, password, sql):
        rds = self.cluster.rds
        env = dict(os.environ, PGPASSWORD=password, PGSSLMODE="require")
        return subprocess.run([rehearsal.pg_bin("psql"), "-h", "127.0.0.1", "-p", str(rds.port), "-U", user,
                               "-d", rds.database, "-Atc", sql], capture_output=True, text=True, env=env, timeout=30)

    def test_4b_each_service_serves_as_its_own_role_confined_to_its_schema(self):
        rds = self.cluster.rds
        sessions = self.psql(rds.user, rds.password,
                             "SELECT DISTINCT usename FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        self.assertEqual(sessions.returncode, 0, sessions.stderr)
        users = set(sessions.stdout.split())
        self.assertEqual(users, {"weft_inventory", "weft_payments", "weft_orders"},
                         "the services hold connections as their own roles, none as the master user")
        # Inventory's role, with the password the bootstrap set from its secret.
        secret = json.loads(self.cluster.moto.client("secretsmanager").get_secret_value(
            SecretId=self.cluster.refs["InventoryDatabaseSecret"], VersionStage="AWSCURRENT")["SecretString"])
        own = self.psql("weft_inventory", secret["password"], "SELECT count(*) FROM inventory.products")
        self.assertEqual(own.returncode, 0, own.stderr)
        other = self.psql("weft_inventory", secret["password"], "SELECT count(*) FROM payments.accounts")
        self.assertIn("permission denied", other.stderr)
        ddl = self.psql("weft_inventory", secret["password"], "DROP TABLE inventory.products")
        self.assertIn("must be owner", ddl.stderr)
        figure(f"database sessions by role: {sorted(users)}; inventory's role is refused payments' schema")

    def test_5_every_aws_call_is_allowed_by_its_role(self):
        calls = self.cluster.calls()
        made = {(self.cluster.role_documents[c.access_key][0], c.action)
                for c in calls if c.access_key in self.cluster.role_documents}
        figure(f"{len(calls)} AWS calls recorded; by role: {sorted(made)}")
        self.assertIn(("InventoryTaskRole", "servicediscovery:UpdateInstanceCustomHealthStatus"), made)
        self.assertIn(("OrdersTaskRole", "servicediscovery:DiscoverInstances"), made)
        self.assertIn(("ExecutionRole", "secretsmanager:GetSecretValue"), made)
        self.assertIn(("ExecutionRole", "ssm:GetParameters"), made)
        for role in ("InventoryTaskRole", "PaymentsTaskRole", "OrdersTaskRole"):
            self.assertIn((role, "acm-pca:IssueCertificate"), made)
            self.assertIn((role, "acm-pca:GetCertificateAuthorityCertificate"), made)
        denied = self.cluster.denied()
        self.assertEqual(denied, [], "calls the template's policies would deny")
        # The check can fail: without the action that reports health, the
        # calls the tasks made are denied, and named.
        documents = {}
        for key, (role, docs) in self.cluster.role_documents.items():
            if role == "InventoryTaskRole":
                trimmed = copy.deepcopy(docs)
                for doc in trimmed:
                    doc["Statement"] = [st for st in doc["Statement"]
                                        if st.get("Action") != "servicediscovery:UpdateInstanceCustomHealthStatus"]
                documents[role] = trimmed
        denied = self.cluster.denied(documents)
        self.assertTrue(denied)
        # Its own identity only: inventory's role may not issue from
        # payments' CA (where IAM is the part that stops it; peers' scoped
        # trust is the other, tested in tests/tests/private_ca.rs).
        (inventory_key, (_, inventory_docs)), = [
            (k, v) for k, v in self.cluster.role_documents.items() if v[0] == "InventoryTaskRole"]
        payments_ca = self.cluster.refs["PaymentsCertificateAuthority"]
        own_ca = self.cluster.refs["InventoryCertificateAuthority"]
        end_entity = "arn:aws:acm-pca:::template/EndEntityCertificate/V1"
        issue = lambda ca, template: iam.Call(inventory_key, "acm-pca:IssueCertificate", ca,  # noqa: E731
                                              {"acm-pca:TemplateArn": template}, "IssueCertificate")
        self.assertTrue(iam.allowed(inventory_docs, issue(own_ca, end_entity)))
        self.assertFalse(iam.allowed(inventory_docs, issue(payments_ca, end_entity)))
        # Nor a CA certificate of its own from its CA.
        self.assertFalse(iam.allowed(inventory_docs, issue(own_ca, "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1")))
        self.assertTrue(all(role == "InventoryTaskRole" and c.action.endswith("UpdateInstanceCustomHealthStatus")
                            for role, c in denied), denied)


def prometheus_series(text):
    """(name as the collector's Prometheus receiver names it, labels with
    the sample value under __value__) for each sample of an OpenMetrics
    text: counters keep their _total; a histogram is one metric under its
    family name."""
    types = {}
    out = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            types[family] = kind
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if not m:
            continue
        name, raw, value = m.groups()
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', raw or ""))
        labels["__value__"] = value
        for suffix in ("_bucket", "_sum", "_count", "_created"):
            family = name[: -len(suffix)] if name.endswith(suffix) else None
            if family and types.get(family) == "histogram":
                name = family
                break
        out.append((name, labels))
    return out


if __name__ == "__main__":
    unittest.main()
