"""Runs Weft's AWS deployment the way ECS would, from the templates alone.

The template (infra/cloudformation/weft.yaml) is the only source of truth:
each service's task definition gives the container's command, environment,
secrets, health check, stop timeout and task role. Around them this module
plays the parts of AWS that cannot run here:

- Cloud Map, Secrets Manager, SSM, IAM and STS are the moto server (through
  boto3 for the set-up; the services use the Rust SDK), set up as the
  template declares them. Every request is recorded so that each call a
  task made can be checked against its role's policy (iam.py), which moto
  itself does not do for resource-scoped statements.
- RDS is a PostgreSQL cluster of our own with TLS required (hostssl only,
  as rds.force_ssl=1 does) and the master user's password in Secrets
  Manager as RDS keeps it.
- The ECS agent: it resolves the task's secrets with the execution role's
  credentials, hands the task its role's temporary credentials (STS
  AssumeRole), serves the task metadata endpoint v4, runs the container
  health check command, registers the task in Cloud Map under its task id
  when the service declares a service registry (and deregisters it when the
  task stops, however it stops), and stops a task with SIGTERM, then
  SIGKILL after its stopTimeout.
- The ingress Network Load Balancer: a TCP listener that forwards each
  connection to a target of the ECS service's target group that passes the
  group's health check (HTTP GET on the health check port and path), and,
  as ECS does, deregisters a stopping task and waits for its connections to
  close (at most the deregistration delay) before the task gets SIGTERM.
- The collector beside each task, as far as the service sees it: its
  configuration comes from SSM through the execution role, as the agent
  fetches it, with ${env:...} expanded from its container's environment;
  an OTLP receiver at the configuration's traces endpoint counts what the
  service exports, and the rehearsal scrapes the configuration's target.
- The image: a directory laid out as infra/Dockerfile lays it out (the
  binaries, the entrypoint, the policies, the database CA bundle); absolute
  image paths in the task definition are mapped into it, and each task has
  its own /run/weft. In awsvpc mode a task has its own address: here each
  task gets its own loopback address (127.0.0.N), which 0.0.0.0 and
  127.0.0.1 in its settings stand for (loopback is the task's own).
"""

import base64
import collections
import http.server
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent import futures

import yaml
from cfnlint.decode import decode

REPO = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "infra" / "cloudformation" / "weft.yaml"
REGION = "us-east-1"
ACCOUNT = "123456789012"
ADMIN = {"aws_access_key_id": "rehearsal", "aws_secret_access_key": "rehearsal", "region_name": REGION}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, predicate, timeout, every=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def load_template():
    template, matches = decode(str(TEMPLATE))
    assert not matches, matches
    return template


def binaries_dir():
    return pathlib.Path(os.environ.get("WEFT_BIN_DIR", REPO / "target" / "debug"))


# ---------------------------------------------------------------- moto


class Moto:
    """A moto server recording every request it receives."""

    def __init__(self, root):
        self.port = free_port()
        self.recording = root / "moto-recording.jsonl"
        env = dict(os.environ, MOTO_ENABLE_RECORDING="true", MOTO_RECORDER_FILEPATH=str(self.recording))
        self.log = open(root / "moto.log", "w")
        # moto_server.py: moto with Cloud Map's revision as AWS moves it.
        self.proc = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).with_name("moto_server.py")), "-H", "127.0.0.1", "-p",
             str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for("moto", self._up, 30)

    def _up(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def client(self, service, **creds):
        import boto3
        from botocore.config import Config

        kwargs = dict(ADMIN)
        kwargs.update(creds)
        # Cloud Map's data plane is a "data-" host on AWS; not on the emulator.
        return boto3.client(service, endpoint_url=self.url, config=Config(inject_host_prefix=False), **kwargs)

    def requests(self):
        if not self.recording.exists():
            return []
        return [json.loads(line) for line in self.recording.read_text().splitlines() if line.strip()]

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------- RDS stand-in


def pg_bin(name):
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    raise AssertionError(f"{name} not found: scripts/setup installs the PostgreSQL server")


def make_ca_and_server_cert(directory):
    """A CA (the RDS CA bundle stand-in) and a server certificate for 127.0.0.1."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rehearsal RDS CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.crt").write_bytes(cert.public_bytes(pem))
    (directory / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(directory / "server.key", 0o600)


class Rds:
    """PostgreSQL configured as the template configures RDS: TLS required,
    password authentication for the master user, one database."""

    def __init__(self, root, master_user, database, password):
        self.dir = root / "rds"
        self.dir.mkdir()
        os.chmod(root, 0o755)
        self.data = self.dir / "data"
        self.port = free_port()
        make_ca_and_server_cert(self.dir)
        self.ca = self.dir / "ca.pem"
        pwfile = self.dir / "pw"
        pwfile.write_text(password + "\n")
        run_as = self._run_as()
        if run_as:
            shutil.chown(self.dir, run_as, run_as)
            for f in self.dir.iterdir():
                shutil.chown(f, run_as, run_as)
        self._pg(pg_bin("initdb"), "-D", str(self.data), "-U", master_user, "--auth=scram-sha-256",
                 f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        (self.data / "pg_hba.conf").write_text(
            "# rds.force_ssl=1: TLS or nothing\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "host all all 0.0.0.0/0 reject\n"
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
                f"ssl = on\nssl_cert_file = '{self.dir / 'server.crt'}'\nssl_key_file = '{self.dir / 'server.key'}'\n"
                "max_connections = 300\nfsync = off\n"
            )
        self.user, self.password, self.database = master_user, password, database
        self.start()
        env = dict(os.environ, PGPASSWORD=password, PGSSLMODE="require")
        self._pg(pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", master_user, "-d", "postgres",
                 "-c", f"CREATE DATABASE {database}", env=env)

    @staticmethod
    def _run_as():
        # PostgreSQL refuses to run as root; CI runs as root.
        return "postgres" if os.geteuid() == 0 else None

    def _pg(self, *args, env=None):
        run_as = self._run_as()
        cmd = list(args)
        if run_as:
            cmd = ["runuser", "-u", run_as, "--"] + cmd
        out = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd="/")
        if out.returncode != 0:
            raise subprocess.CalledProcessError(out.returncode, cmd, stderr=out.stderr)

    def start(self):
        self._pg(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60", "start")

    def stop(self):
        self._pg(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


# ---------------------------------------------------------------- the template


class Resolver:
    """Resolves the template's intrinsic functions against what the
    rehearsal created: parameters, physical ids, attributes."""

    def __init__(self, template, parameters, refs, attributes):
        self.t = template
        self.parameters = parameters
        self.refs = refs
        self.attributes = attributes
        self.pseudo = {"AWS::Region": REGION, "AWS::Partition": "aws", "AWS::AccountId": ACCOUNT,
                       "AWS::StackName": "weft-rehearsal", "AWS::URLSuffix": "amazonaws.com"}

    def ref(self, name):
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.refs:
            return self.refs[name]
        raise KeyError(f"the rehearsal cannot resolve Ref {name}")

    def getatt(self, resource, attribute):
        key = f"{resource}.{attribute}"
        if key not in self.attributes:
            raise KeyError(f"the rehearsal cannot resolve GetAtt {key}")
        return self.attributes[key]

    def condition(self, name):
        return bool(self.resolve(self.t["Conditions"][name]))

    def resolve(self, value):
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (fn, arg), = value.items()
            if fn == "Ref":
                return self.ref(arg)
            if fn == "Fn::GetAtt":
                parts = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.getatt(parts[0], parts[1])
            if fn == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

                def sub(m):
                    name = m.group(1)
                    if name in extra:
                        return str(extra[name])
                    if "." in name:
                        return str(self.getatt(*name.split(".", 1)))
                    return str(self.ref(name))

                return re.sub(r"\$\{([^}!]+)\}", sub, text)
            if fn == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(cond) else no)
            if fn == "Fn::Not":
                return not self.resolve(arg[0])
            if fn == "Fn::Equals":
                a, b = self.resolve(arg)
                return str(a) == str(b)
            if fn == "Fn::Join":
                sep, items = arg
                return sep.join(str(x) for x in self.resolve(items))
            if fn == "Condition":
                return self.condition(arg)
        return {k: self.resolve(v) for k, v in value.items()}


def of_type(template, kind):
    return {n: r for n, r in template["Resources"].items() if r["Type"] == kind}


def localize(value, address):
    """A task's own view of the addresses written in its definition: in
    awsvpc mode 0.0.0.0 and loopback are the task's network namespace, here
    its own loopback address. Applied to literals before resolving, so
    addresses the template substitutes in (the database's) are untouched."""
    if isinstance(value, str):
        return re.sub(r"(?<![\d.])(?:0\.0\.0\.0|127\.0\.0\.1)(?![\d])", address, value)
    if isinstance(value, list):
        return [localize(v, address) for v in value]
    if isinstance(value, dict):
        return {k: localize(v, address) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- tasks


class Metadata(http.server.ThreadingHTTPServer):
    """The task metadata endpoint v4 of every task: /<task id>/task."""

    daemon_threads = True

    def __init__(self):
        self.tasks = {}
        handler = self._handler()
        super().__init__(("127.0.0.1", 0), handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                parts = self.path.strip("/").split("/")
                doc = server.tasks.get(parts[0]) if len(parts) == 2 and parts[1] == "task" else None
                body = json.dumps(doc).encode() if doc else b"{}"
                self.send_response(200 if doc else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler

    def uri(self, task_id):
        return f"http://127.0.0.1:{self.server_address[1]}/{task_id}"


class Task:
    """One running task of a service: its container's process, as ECS runs it."""

    def __init__(self, cluster, service, address, zone):
        self.cluster = cluster
        self.service = service
        self.definition = service.definition
        self.container = service.container
        self.address = address
        self.task_id = uuid.uuid4().hex
        self.arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/weft-rehearsal/{self.task_id}"
        self.root = cluster.root / "tasks" / self.task_id
        (self.root / "run" / "weft").mkdir(parents=True)
        self.log_path = self.root / "log"
        self._stage_bin()
        cluster.metadata.tasks[self.task_id] = {"TaskARN": self.arn, "AvailabilityZone": zone,
                                                "Cluster": "weft-rehearsal", "LaunchType": "FARGATE"}
        # What the service depends on goes first: containers that must exit
        # successfully (DependsOn SUCCESS: the database bootstrap) run to
        # completion, then those that must have started (the collector).
        depends = {d["ContainerName"]: d["Condition"] for d in self.container.get("DependsOn", [])}
        for c in service.sidecars:
            if depends.get(c["Name"]) == "SUCCESS":
                self._run_to_completion(c)
        self.collectors = [Collector(self, c) for c in service.sidecars if depends.get(c["Name"]) == "START"]
        self.env = self._environment()
        self.command = [self.map_path(a) for a in self.container["Command"]]
        self.entrypoint = [self.map_path("/usr/local/bin/weft-entrypoint")]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.entrypoint + self.command, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.root)
        self.started = time.monotonic()
        self.registered = False

    def map_path(self, value):
        """An image path as it is in this task's container."""
        value = str(value)
        value = value.replace("/run/weft", str(self.root / "run" / "weft"))
        value = value.replace("/etc/weft", str(self.cluster.image / "etc" / "weft"))
        return value.replace("/usr/local/bin", str(self.root / "bin"))

    def _stage_bin(self):
        # The task's own view of /usr/local/bin: the image's binaries and an
        # entrypoint whose paths are this container's.
        b = self.root / "bin"
        b.mkdir()
        for f in (self.cluster.image / "usr" / "local" / "bin").iterdir():
            (b / f.name).symlink_to(f)
        entry = (REPO / "infra" / "entrypoint.sh").read_text()
        entry = entry.replace("/run/weft", str(self.root / "run" / "weft")).replace(
            "/etc/weft", str(self.cluster.image / "etc" / "weft"))
        (b / "weft-entrypoint").unlink()
        (b / "weft-entrypoint").write_text(entry)
        os.chmod(b / "weft-entrypoint", 0o755)

    def _run_to_completion(self, container):
        """A container the service needs to have exited 0 before it starts."""
        env = self._environment(container)
        command = self.entrypoint_path() + [self.map_path(a) for a in container["Command"]]
        out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=self.root, timeout=180)
        (self.root / f"{container['Name']}.log").write_text(out.stdout + out.stderr)
        if out.returncode != 0:
            raise AssertionError(f"{self.service.name} task's {container['Name']} container exited "
                                 f"{out.returncode}: {out.stderr[-3000:]}")

    def entrypoint_path(self):
        return [self.map_path("/usr/local/bin/weft-entrypoint")]

    def _environment(self, container=None):
        container = container or self.container
        r = self.cluster.resolver
        env = {"PATH": "", "HOME": str(self.root)}
        for item in container.get("Environment", []):
            value = str(r.resolve(localize(item["Value"], self.address)))
            env[item["Name"]] = self.map_path(value)
        for item in container.get("Secrets", []):
            env[item["Name"]] = self.cluster.resolve_secret(r.resolve(item["ValueFrom"]))
        env["PATH"] = f"{self.root / 'bin'}:/usr/bin:/bin"
        creds = self.cluster.role_credentials[self.service.task_role]
        env.update({
            # What ECS gives every task: its role's credentials (here as
            # variables; ECS serves them on AWS_CONTAINER_CREDENTIALS_RELATIVE_URI),
            # its region and its metadata endpoint.
            "AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"], "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
            "ECS_CONTAINER_METADATA_URI_V4": self.cluster.metadata.uri(self.task_id),
            # Cloud Map is the emulator.
            "AWS_ENDPOINT_URL": self.cluster.moto.url,
        })
        return env

    def health_check(self):
        """The container health check command, as the agent runs it."""
        command = self.container["HealthCheck"]["Command"]
        assert command[0] == "CMD", command
        args = [self.map_path(a) for a in command[1:]]
        try:
            out = subprocess.run(args, env=self.env, capture_output=True, timeout=self.container["HealthCheck"]["Timeout"],
                                 cwd=self.root)
            return out.returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """What ECS does to stop a task: SIGTERM, then SIGKILL after the
        container's stopTimeout. Returns the seconds it took to exit."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.container["StopTimeout"])
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.service.name} task {self.task_id} outlived its stopTimeout and was killed")
        return time.monotonic() - began

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def close(self):
        for c in self.collectors:
            c.stop()
        self.log.close()


class Collector:
    """A task's collector container, as the service sees it: the
    configuration the agent hands it (AOT_CONFIG_CONTENT from SSM, read with
    the execution role), its ${env:...} expanded from the container's
    environment, and an OTLP/gRPC receiver at the configuration's traces
    endpoint that keeps what the service exports. The real collector (a
    container image) cannot run here; what it would do with the data is
    checked on the template (infra/tests/test_templates.py)."""

    TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

    def __init__(self, task, container):
        import grpc

        r = task.cluster.resolver
        self.name = container["Name"]
        env = {e["Name"]: str(r.resolve(localize(e["Value"], task.address)))
               for e in container.get("Environment", [])}
        for item in container.get("Secrets", []):
            env[item["Name"]] = task.cluster.resolve_secret(r.resolve(item["ValueFrom"]))
        text = env["AOT_CONFIG_CONTENT"]

        def expand(m):
            if m.group(1) not in env:
                raise AssertionError(f"the collector's configuration reads ${{env:{m.group(1)}}}, "
                                     f"which its container does not set")
            return env[m.group(1)]

        self.config = yaml.safe_load(localize(re.sub(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", expand, text),
                                              task.address))
        scrape = self.config["receivers"]["prometheus"]["config"]["scrape_configs"]
        self.scrape_targets = [(t, sc.get("labels", {})) for job in scrape for sc in job["static_configs"]
                               for t in sc["targets"]]
        self.otlp = self.config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        self.exports = []
        received = self.exports

        class Traces(grpc.GenericRpcHandler):
            def service(self, details):
                if details.method != Collector.TRACE_EXPORT:
                    return None
                # An empty ExportTraceServiceResponse is zero bytes.
                return grpc.unary_unary_rpc_method_handler(lambda request, _: (received.append(request), b"")[1])

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((Traces(),))
        self.server.add_insecure_port(self.otlp)
        self.server.start()

    def scrape(self):
        """What the collector's Prometheus receiver reads: (labels it adds, text)."""
        out = []
        for target, labels in self.scrape_targets:
            with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
                out.append((labels, response.read().decode()))
        return out

    def stop(self):
        self.server.stop(grace=None)


class LoadBalancer:
    """The internal Network Load Balancer: TCP, so TLS passes through to the
    targets; each new connection goes to the next target that passes the
    target group's health check; a deregistered target gets no new
    connections while its open ones carry on."""

    def __init__(self, address, health):
        self.health = health  # (protocol, port, path, interval)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(128)
        self.address = f"{address}:{self.sock.getsockname()[1]}"
        self.targets = {}  # task id -> (ip, port)
        self.healthy = set()
        self.open = collections.Counter()
        self.lock = threading.Lock()
        self.turn = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._check, daemon=True).start()

    def register(self, task_id, ip, port):
        with self.lock:
            self.targets[task_id] = (ip, port)

    def deregister(self, task_id):
        with self.lock:
            self.targets.pop(task_id, None)
            self.healthy.discard(task_id)

    def connections(self, task_id):
        with self.lock:
            return self.open[task_id]

    def _check(self):
        protocol, port, path, interval = self.health
        while not self.closed:
            with self.lock:
                targets = dict(self.targets)
            for task_id, (ip, _) in targets.items():
                try:
                    with urllib.request.urlopen(f"{protocol.lower()}://{ip}:{port}{path}", timeout=2) as r:
                        ok = r.status == 200
                except OSError:
                    ok = False
                with self.lock:
                    if ok and task_id in self.targets:
                        self.healthy.add(task_id)
                    else:
                        self.healthy.discard(task_id)
            time.sleep(interval)

    def _pick(self):
        with self.lock:
            ready = sorted(self.healthy)
            if not ready:
                return None, None
            self.turn += 1
            task_id = ready[self.turn % len(ready)]
            self.open[task_id] += 1
            return task_id, self.targets[task_id]

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            task_id, target = self._pick()
            if target is None:
                client.close()  # no healthy target: the NLB resets the connection
                continue
            try:
                upstream = socket.create_connection(target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                with self.lock:
                    self.open[task_id] -= 1
                continue
            done = threading.Barrier(2, action=lambda t=task_id: self._closed(t))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, done), daemon=True).start()

    def _closed(self, task_id):
        with self.lock:
            self.open[task_id] -= 1

    @staticmethod
    def _pump(src, dst, done):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        done.wait()
        src.close()

    def close(self):
        self.closed = True
        self.sock.close()


class Service:
    """An ECS service of the template."""

    def __init__(self, cluster, logical, props):
        r = cluster.resolver
        self.name = props["ServiceName"]
        self.props = props
        td_name = props["TaskDefinition"]["Ref"]
        self.definition = cluster.template["Resources"][td_name]["Properties"]
        self.task_role = self.definition["TaskRoleArn"]["Fn::GetAtt"][0]
        self.registries = [r.resolve(x) for x in props.get("ServiceRegistries", [])]
        # The service's container is the one its registry names; the others
        # are sidecars (the collector).
        (main,) = {x["ContainerName"] for x in self.registries}
        containers = self.definition["ContainerDefinitions"]
        (self.container,) = [c for c in containers if c["Name"] == main]
        self.sidecars = [c for c in containers if c["Name"] != main]
        assert all(not c.get("Essential", True) for c in self.sidecars), "a sidecar that can stop the service"
        # Target groups: (load balancer, container port, deregistration delay).
        self.load_balancers = []
        for lb in props.get("LoadBalancers", []):
            group = lb["TargetGroupArn"]["Ref"]
            self.load_balancers.append((cluster.load_balancer(group), lb["ContainerPort"],
                                        cluster.deregistration_delay(group)))
        self.tasks = []


class Cluster:
    """The rehearsed deployment."""

    def __init__(self, root, parameters):
        self.root = root
        self.template = load_template()
        self.moto = Moto(root)
        self.metadata = Metadata()
        self.next_address = 10
        self.parameters = parameters
        self.zones = [f"{REGION}a", f"{REGION}b"]
        self.secrets = {}
        self.refs, self.attributes = {}, {}
        self.role_credentials, self.role_documents = {}, {}
        self.service_arns, self.secret_arns = {}, {}
        self.image = root / "image"
        self.rds = None
        self.load_balancers, self.listener_ports = {}, {}

    # -- set-up, as CloudFormation would create the stack

    def create(self, secrets):
        """Creates what the template declares and the rehearsal needs:
        the namespace and its services, the database and its secret, the
        roles with their policies. `secrets` are the parameter secrets
        (name -> JSON), created first as the operator would."""
        t = self.template
        sd = self.moto.client("servicediscovery")
        sm = self.moto.client("secretsmanager")
        for param, value in secrets.items():
            out = sm.create_secret(Name=f"weft-rehearsal/{param}", SecretString=json.dumps(value))
            self.parameters[param] = out["ARN"]
            self.secret_arns[out["ARN"]] = out["ARN"]
        r = Resolver(t, self.parameters, self.refs, self.attributes)
        self.resolver = r
        for p, spec in t["Parameters"].items():
            if p not in self.parameters and "Default" in spec:
                self.parameters[p] = spec["Default"]

        (ns_name, ns), = of_type(t, "AWS::ServiceDiscovery::HttpNamespace").items()
        ns_props = r.resolve(ns["Properties"])
        sd.create_http_namespace(Name=ns_props["Name"])
        ns_id = next(n["Id"] for n in sd.list_namespaces()["Namespaces"] if n["Name"] == ns_props["Name"])
        self.refs[ns_name] = ns_id
        self.namespace = ns_props["Name"]
        for name, res in of_type(t, "AWS::ServiceDiscovery::Service").items():
            props = r.resolve(res["Properties"])
            kwargs = {"Name": props["Name"], "NamespaceId": props["NamespaceId"]}
            if "HealthCheckCustomConfig" in props:
                kwargs["HealthCheckCustomConfig"] = props["HealthCheckCustomConfig"]
            out = sd.create_service(**kwargs)["Service"]
            self.refs[name] = out["Id"]
            self.attributes[f"{name}.Arn"] = out["Arn"]
            self.attributes[f"{name}.Id"] = out["Id"]
            self.service_arns[out["Id"]] = out["Arn"]

        # The database: RDS keeps the master password in a secret of its own.
        (db_name, db), = of_type(t, "AWS::RDS::DBInstance").items()
        db_props = r.resolve({k: v for k, v in db["Properties"].items() if k in ("MasterUsername", "DBName")})
        password = uuid.uuid4().hex
        self.rds = Rds(self.root, db_props["MasterUsername"], db_props["DBName"], password)
        out = sm.create_secret(Name=f"rds!db-{uuid.uuid4()}",
                               SecretString=json.dumps({"username": db_props["MasterUsername"], "password": password}))
        self.secret_arns[out["ARN"]] = out["ARN"]
        self.attributes[f"{db_name}.MasterUserSecret.SecretArn"] = out["ARN"]
        self.attributes[f"{db_name}.Endpoint.Address"] = "127.0.0.1"
        self.attributes[f"{db_name}.Endpoint.Port"] = str(self.rds.port)

        # Secrets the template generates (the database roles' passwords).
        for name, res in of_type(t, "AWS::SecretsManager::Secret").items():
            generate = res["Properties"]["GenerateSecretString"]
            value = json.loads(generate.get("SecretStringTemplate", "{}"))
            value[generate["GenerateStringKey"]] = uuid.uuid4().hex + uuid.uuid4().hex[:8]
            out = sm.create_secret(Name=f"weft-rehearsal/{name}", SecretString=json.dumps(value))
            self.refs[name] = out["ARN"]
            self.secret_arns[out["ARN"]] = out["ARN"]

        # Private CAs, as CloudFormation makes them: the CA, its own
        # certificate signed with the root template, the activation.
        pca = self.moto.client("acm-pca")
        for name, res in of_type(t, "AWS::ACMPCA::CertificateAuthority").items():
            props = r.resolve(res["Properties"])
            arn = pca.create_certificate_authority(
                CertificateAuthorityType=props["Type"], UsageMode=props["UsageMode"],
                CertificateAuthorityConfiguration={k: props[k] for k in ("KeyAlgorithm", "SigningAlgorithm", "Subject")},
            )["CertificateAuthorityArn"]
            self.refs[name] = arn
            self.attributes[f"{name}.Arn"] = arn
            self.attributes[f"{name}.CertificateSigningRequest"] = pca.get_certificate_authority_csr(
                CertificateAuthorityArn=arn)["Csr"]
        for name, res in of_type(t, "AWS::ACMPCA::Certificate").items():
            props = r.resolve(res["Properties"])
            ca = props["CertificateAuthorityArn"]
            cert_arn = pca.issue_certificate(
                CertificateAuthorityArn=ca, Csr=props["CertificateSigningRequest"].encode(),
                SigningAlgorithm=props["SigningAlgorithm"], TemplateArn=props["TemplateArn"],
                Validity={"Type": props["Validity"]["Type"], "Value": int(props["Validity"]["Value"])},
            )["CertificateArn"]
            self.refs[name] = cert_arn
            self.attributes[f"{name}.Certificate"] = pca.get_certificate(
                CertificateAuthorityArn=ca, CertificateArn=cert_arn)["Certificate"]
        for name, res in of_type(t, "AWS::ACMPCA::CertificateAuthorityActivation").items():
            props = r.resolve(res["Properties"])
            pca.import_certificate_authority_certificate(
                CertificateAuthorityArn=props["CertificateAuthorityArn"], Certificate=props["Certificate"].encode())
            self.refs[name] = props["CertificateAuthorityArn"]

        # Parameters (the collector's configuration) and the metrics log group.
        ssm = self.moto.client("ssm")
        for name, res in of_type(t, "AWS::SSM::Parameter").items():
            props = r.resolve(res["Properties"])
            ssm.put_parameter(Name=props["Name"], Value=props["Value"], Type=props["Type"])
            self.refs[name] = props["Name"]
        for name, res in of_type(t, "AWS::Logs::LogGroup").items():
            group = r.resolve(res["Properties"]["LogGroupName"])
            self.refs[name] = group
            self.attributes[f"{name}.Arn"] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{group}:*"

        # Roles: created with their inline policies, then assumed as ECS does.
        iam = self.moto.client("iam")
        sts = self.moto.client("sts")
        for name, res in of_type(t, "AWS::IAM::Role").items():
            self.attributes[f"{name}.Arn"] = f"arn:aws:iam::{ACCOUNT}:role/{name}"
        for name, res in of_type(t, "AWS::IAM::Role").items():
            props = r.resolve(res["Properties"])
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"]))
            documents = []
            for policy in props.get("Policies", []):
                iam.put_role_policy(RoleName=name, PolicyName=policy["PolicyName"],
                                    PolicyDocument=json.dumps(policy["PolicyDocument"]))
                documents.append(policy["PolicyDocument"])
            creds = sts.assume_role(RoleArn=self.attributes[f"{name}.Arn"], RoleSessionName=name)["Credentials"]
            self.role_credentials[name] = creds
            self.role_documents[creds["AccessKeyId"]] = (name, documents)
        self._stage_image()
        self.services = {}
        for logical, res in of_type(t, "AWS::ECS::Service").items():
            service = Service(self, logical, res["Properties"])
            self.services[service.name] = service

    def _stage_image(self):
        """The image's file system, as infra/Dockerfile builds it."""
        bin_dir = self.image / "usr" / "local" / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("weft-inventory", "weft-payments", "weft-orders", "weft"):
            binary = binaries_dir() / name
            assert binary.exists(), f"{binary} missing: build with `cargo build --workspace --bins`"
            (bin_dir / name).symlink_to(binary)
        (bin_dir / "weft-entrypoint").symlink_to(REPO / "infra" / "entrypoint.sh")
        shutil.copytree(REPO / "config" / "policy", self.image / "etc" / "weft" / "policy")
        shutil.copy(self.rds.ca, self.image / "etc" / "weft" / "rds-ca.pem")

    def resolve_secret(self, value_from):
        """What the agent does with a container secret: reads it, from
        Secrets Manager or SSM Parameter Store, with the execution role's
        credentials (recorded and checked like any call)."""
        creds = self.role_credentials["ExecutionRole"]
        as_execution_role = dict(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                                 aws_session_token=creds["SessionToken"])
        if value_from.startswith("arn:aws:ssm:"):
            ssm = self.moto.client("ssm", **as_execution_role)
            out = ssm.get_parameters(Names=[value_from], WithDecryption=True)
            assert not out["InvalidParameters"], f"no SSM parameter {value_from}"
            return out["Parameters"][0]["Value"]
        m = re.match(r"^(arn:aws:secretsmanager:[^:]+:[^:]+:secret:[^:]+)(?::([^:]*):([^:]*):([^:]*))?$", value_from)
        assert m, f"secret reference {value_from!r}"
        arn, json_key = m.group(1), m.group(2)
        creds = self.role_credentials["ExecutionRole"]
        sm = self.moto.client("secretsmanager", aws_access_key_id=creds["AccessKeyId"],
                              aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
        # The current version, asked for by its stage: moto's default
        # version does not follow UpdateSecretVersionStage (AWS's does).
        text = sm.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")["SecretString"]
        return json.loads(text)[json_key] if json_key else text

    def load_balancer(self, group):
        """The load balancer in front of target group `group` (one listener
        forwards to it)."""
        if group not in self.load_balancers:
            t = self.template
            props = t["Resources"][group]["Properties"]
            (listener,) = [res["Properties"] for res in of_type(t, "AWS::ElasticLoadBalancingV2::Listener").values()
                           if res["Properties"]["DefaultActions"][0]["TargetGroupArn"] == {"Ref": group}]
            lb = t["Resources"][listener["LoadBalancerArn"]["Ref"]]["Properties"]
            assert lb["Type"] == "network" and lb["Scheme"] == "internal", lb
            assert listener["Protocol"] == "TCP", "TLS passes through to the service"
            # The group's health check, every second rather than every
            # HealthCheckIntervalSeconds while the rehearsal runs.
            health = (props["HealthCheckProtocol"], props["HealthCheckPort"], props.get("HealthCheckPath", "/"), 1)
            self.load_balancers[group] = LoadBalancer(f"127.0.0.{2 + len(self.load_balancers)}", health)
            self.listener_ports[group] = listener["Port"]
        return self.load_balancers[group]

    def deregistration_delay(self, group):
        attributes = self.template["Resources"][group]["Properties"].get("TargetGroupAttributes", [])
        return next((int(a["Value"]) for a in attributes if a["Key"] == "deregistration_delay.timeout_seconds"), 300)

    # -- ECS

    def start_task(self, service):
        address = f"127.0.0.{self.next_address}"
        self.next_address += 1
        zone = self.zones[len(service.tasks) % 2]
        task = Task(self, service, address, zone)
        service.tasks.append(task)
        sd = self.moto.client("servicediscovery")
        for registry in service.registries:
            # ECS's service registry: the task id, the task's address and
            # the container port; unhealthy until the task says otherwise.
            service_id = registry["RegistryArn"].rsplit("/", 1)[1]
            sd.register_instance(ServiceId=service_id, InstanceId=task.task_id, Attributes={
                "AWS_INSTANCE_IPV4": task.address, "AWS_INSTANCE_PORT": str(registry["ContainerPort"]),
                "AWS_INIT_HEALTH_STATUS": "UNHEALTHY", "ECS_CLUSTER_NAME": "weft-rehearsal",
                "ECS_SERVICE_NAME": service.name, "AVAILABILITY_ZONE": zone})
            task.registered = True
        # ECS registers a running task's address with each target group;
        # the load balancer routes to it once its health check passes.
        for lb, port, _ in service.load_balancers:
            lb.register(task.task_id, task.address, port)
        return task

    def deregister(self, task):
        if not task.registered:
            return
        sd = self.moto.client("servicediscovery")
        for registry in task.service.registries:
            sd.deregister_instance(ServiceId=registry["RegistryArn"].rsplit("/", 1)[1], InstanceId=task.task_id)
        task.registered = False

    def wait_healthy(self, task, timeout=None):
        """Runs the container health check as the agent does until it
        passes; fails when the task would be replaced (retries failures
        past the start period) or its process exits. A service behind a
        load balancer counts a task healthy (and so goes on with a
        deployment) only once its target group's health check passes too,
        within the service's HealthCheckGracePeriodSeconds."""
        hc = task.container["HealthCheck"]
        failures = 0
        deadline = time.monotonic() + (timeout or hc["StartPeriod"] + hc["Retries"] * hc["Interval"] + 30)
        while True:
            if not task.alive():
                raise AssertionError(f"{task.service.name} task exited: {task.log_path.read_text()[-3000:]}")
            if task.health_check():
                grace = task.service.props.get("HealthCheckGracePeriodSeconds", 0)
                for lb, _, _ in task.service.load_balancers:
                    wait_for(f"{task.service.name} task healthy in its target group",
                             lambda: task.task_id in lb.healthy, grace)
                return time.monotonic() - task.started
            if time.monotonic() - task.started > hc["StartPeriod"]:
                failures += 1
                if failures >= hc["Retries"]:
                    raise AssertionError(f"{task.service.name} task failed its health check {failures} times: "
                                         f"{task.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{task.service.name} task never healthy")
            # The template's interval, shortened while starting so the
            # rehearsal does not wait 10 s per task; failures count as ECS counts them.
            time.sleep(1)

    def stop_task(self, task):
        """ECS stopping a task of a service: out of the registry and the
        target groups first; once the load balancer has drained it (its
        connections closed, or the deregistration delay over), SIGTERM, then
        SIGKILL after stopTimeout. Returns seconds from SIGTERM to exit."""
        self.deregister(task)
        for lb, _, delay in task.service.load_balancers:
            lb.deregister(task.task_id)
            deadline = time.monotonic() + delay
            while lb.connections(task.task_id) > 0 and time.monotonic() < deadline:
                time.sleep(0.2)
        took = task.stop()
        task.service.tasks.remove(task)
        task.close()
        return took

    def reap(self):
        """The agent noticing tasks whose process died: the task stops, and
        its service registry entry goes with it."""
        for service in self.services.values():
            for task in list(service.tasks):
                if not task.alive():
                    self.deregister(task)
                    for lb, _, _ in service.load_balancers:
                        lb.deregister(task.task_id)
                    service.tasks.remove(task)
                    task.close()

    def instances(self, service):
        sd = self.moto.client("servicediscovery")
        out = sd.discover_instances(NamespaceName=self.namespace, ServiceName=service, HealthStatus="ALL")
        return {i["InstanceId"]: i.get("HealthStatus") for i in out["Instances"]}

    # -- checks

    def ca_certificate(self, logical):
        """The PEM certificate of the template's CA `logical`, as
        `aws acm-pca get-certificate-authority-certificate` returns it."""
        return self.moto.client("acm-pca").get_certificate_authority_certificate(
            CertificateAuthorityArn=self.refs[logical])["Certificate"]

    def calls(self):
        import iam

        out = []
        for entry in self.moto.requests():
            # The rehearsal's own set-up (as the stack's creator) is not checked.
            if iam.access_key_of(entry["headers"]) not in self.role_documents:
                continue
            call = iam.describe(entry, self.service_arns, self.secret_arns, REGION, ACCOUNT)
            if isinstance(call, list):
                out.extend(call)
            elif call is not None:
                out.append(call)
        return out

    def denied(self, documents_override=None):
        """Calls made by a role that its policies would deny."""
        import iam

        by_key = {k: docs for k, (_, docs) in self.role_documents.items()}
        if documents_override:
            by_key = {k: documents_override.get(self.role_documents[k][0], docs) for k, docs in by_key.items()}
        return [(self.role_documents[c.access_key][0], c) for c in iam.denied_calls(by_key, self.calls())]

    def close(self):
        for service in getattr(self, "services", {}).values():
            for task in service.tasks:
                if task.alive():
                    task.kill()
                task.close()
        for lb in getattr(self, "load_balancers", {}).values():
            lb.close()
        if self.rds:
            try:
                self.rds.stop()
            except subprocess.CalledProcessError:
                pass  # already stopped
        self.metadata.shutdown()
        self.moto.stop()


def secret_value_param(template):
    """Parameters the operator fills with a secret's ARN."""
    return [p for p in template["Parameters"] if p.endswith("TlsSecretArn")]


def weft(*args, env=None, check=True, timeout=60):
    out = subprocess.run([str(binaries_dir() / "weft"), *args], capture_output=True, text=True, env=env,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"weft {' '.join(args)}: {out.stderr}")
    return out


def tempdir():
    return pathlib.Path(tempfile.mkdtemp(prefix="weft-rehearsal-"))


def b64(s):
    return base64.b64encode(s.encode()).decode()
