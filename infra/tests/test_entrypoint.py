"""The image's entrypoint (infra/entrypoint.sh) turns the secrets ECS injects
into files. The container health check runs through it too, and can start
while the server's own entrypoint is still writing: concurrent runs must all
succeed and leave complete files.
"""

import pathlib
import subprocess
import tempfile
import unittest

REPO = pathlib.Path(__file__).resolve().parents[2]


class Entrypoint(unittest.TestCase):
    def test_concurrent_runs_all_succeed_and_leave_whole_files(self):
        for _ in range(5):
            with tempfile.TemporaryDirectory() as d:
                root = pathlib.Path(d)
                (root / "etc" / "policy").mkdir(parents=True)
                (root / "etc" / "policy" / "orders.toml").write_text('caller = "spiffe://weft.local/x"\n')
                script = (REPO / "infra" / "entrypoint.sh").read_text()
                script = script.replace("/run/weft", str(root / "run")).replace("/etc/weft", str(root / "etc"))
                entry = root / "entrypoint.sh"
                entry.write_text(script)
                env = {"PATH": "/usr/bin:/bin", "WEFT_TLS_CERT_PEM": "CERT" * 5000, "WEFT_TLS_KEY_PEM": "KEY",
                       "WEFT_TLS_CA_PEM": "CA" * 3000, "WEFT_POLICY_NAME": "orders", "WEFT_TRUST_DOMAIN": "td.example"}
                (root / "run").mkdir()
                runs = [subprocess.Popen(["sh", str(entry), "true"], env=env, stderr=subprocess.PIPE, text=True)
                        for _ in range(12)]
                for r in runs:
                    _, err = r.communicate(timeout=30)
                    self.assertEqual(r.returncode, 0, err)
                self.assertEqual((root / "run" / "tls" / "cert.pem").read_text(), "CERT" * 5000 + "\n")
                self.assertEqual((root / "run" / "tls" / "ca.pem").read_text(), "CA" * 3000 + "\n")
                self.assertEqual((root / "run" / "policy.toml").read_text(), 'caller = "spiffe://td.example/x"\n')
                self.assertEqual(sorted(p.name for p in (root / "run" / "tls").iterdir()),
                                 ["ca.pem", "cert.pem", "key.pem"], "no temporary file left behind")


if __name__ == "__main__":
    unittest.main()
