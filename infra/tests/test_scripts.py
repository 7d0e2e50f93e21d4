"""scripts/deploy and scripts/remove against the templates they drive: the
parameters deploy passes are the mesh template's (every one without a
default is given, none is unknown), the outputs it reads exist, and the
services it waits for and the secrets it writes are the template's. They
run against a real account only (ECS, RDS, CloudFormation with Cloud Map
are beyond the emulator); CI also runs shellcheck on them.
"""

import os
import pathlib
import re
import subprocess
import unittest

from cfnlint.decode import decode

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = (REPO / "scripts" / "deploy").read_text()
REMOVE = (REPO / "scripts" / "remove").read_text()


def load(name):
    template, matches = decode(str(REPO / "infra" / "cloudformation" / name))
    assert not matches, matches
    return template


class DeployScript(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.weft = load("weft.yaml")
        cls.network = load("network.yaml")

    def test_it_passes_exactly_the_parameters_the_template_needs(self):
        given = set()
        for line in DEPLOY.splitlines():
            m = re.match(r"^\s*params\+?=\((.*)\)\s*$", line)
            if m:
                given |= set(re.findall(r"(?:^|\s)([A-Za-z]+)=", m.group(1)))
        params = self.weft["Parameters"]
        self.assertEqual(given - set(params), set(), "deploy passes parameters the template does not have")
        required = {name for name, spec in params.items() if "Default" not in spec}
        self.assertEqual(required - given, set(), "deploy leaves parameters without a default unset")
        self.assertIn("DatabaseDeletionProtection", given)

    def test_the_outputs_it_reads_exist(self):
        for stack, name in re.findall(r'output "\$stack(-network)?" (\w+)', DEPLOY):
            outputs = (self.network if stack else self.weft)["Outputs"]
            self.assertIn(name, outputs, f"deploy reads output {name} of the {'network' if stack else 'mesh'} stack")

    def test_it_waits_for_every_service_and_writes_each_services_ca(self):
        services = sorted(p["Properties"]["ServiceName"] for p in self.weft["Resources"].values()
                          if p["Type"] == "AWS::ECS::Service")
        m = re.search(r"aws ecs wait services-stable .* --services ([a-z ]+)\n", DEPLOY)
        self.assertEqual(sorted(m.group(1).split()), services)
        for script in (DEPLOY, REMOVE):
            (loop,) = set(re.findall(r"for s in ([a-z ]+); do", script))
            self.assertEqual(sorted(loop.split()), services)
        # Through the ingress, orders is verified under the name the stack
        # outputs, which its task asks Private CA for.
        self.assertEqual(self.weft["Outputs"]["IngressServerName"]["Value"], {"Fn::Sub": "orders.${NamespaceName}"})
        env = {e["Name"]: e["Value"] for e in self.weft["Resources"]["OrdersTaskDefinition"]["Properties"]
               ["ContainerDefinitions"][0]["Environment"]}
        self.assertEqual(env["WEFT_PCA_DNS_NAMES"], {"Fn::Sub": "orders.${NamespaceName}"})
        # mesh-ca.pem holds each service's CA, read from the outputs.
        self.assertIn('"${s^}CertificateAuthorityArn"', DEPLOY)
        for s in services:
            self.assertIn(f"{s.title()}CertificateAuthorityArn", self.weft["Outputs"])

    def test_remove_lifts_the_protection_it_needs_to_delete(self):
        self.assertIn("Database", self.weft["Resources"])
        self.assertIn("DatabaseDeletionProtection", REMOVE)
        self.assertIn("--logical-resource-id Database", REMOVE)


if __name__ == "__main__":
    unittest.main()


class CargoTargetDirectory(unittest.TestCase):
    """The scripts run Weft's binaries from cargo's target directory, so a
    checkout with CARGO_TARGET_DIR set (or a cargo configuration that moves
    it) runs and tests as any other."""

    def test_no_script_names_target_by_path(self):
        for name in ("run", "sdk-test", "test"):
            text = (REPO / "scripts" / name).read_text()
            self.assertNotRegex(text, r"(?<![\w$)/])target/(debug|release)\b", name)

    def test_the_target_directory_is_cargos(self):
        def target_dir(env):
            out = subprocess.run(
                ["bash", "-c", "source scripts/setup >/dev/null 2>&1; cargo_target_dir"],
                cwd=REPO, env=env, capture_output=True, text=True, check=True)
            return out.stdout.strip()

        unset = {k: v for k, v in os.environ.items() if k != "CARGO_TARGET_DIR"}
        self.assertEqual(target_dir({**unset, "CARGO_TARGET_DIR": "/tmp/weft-elsewhere"}), "/tmp/weft-elsewhere")
        self.assertEqual(target_dir(unset), str(REPO / "target"))
