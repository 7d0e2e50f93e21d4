"""The IAM evaluator the rehearsal trusts, checked on its own."""

import unittest

from iam import Call, allowed

ARN = "arn:aws:servicediscovery:us-east-1:123456789012:service/srv-1"
POLICY = {"Statement": [
    {"Effect": "Allow", "Action": "servicediscovery:UpdateInstanceCustomHealthStatus", "Resource": ARN},
    {"Effect": "Allow", "Action": ["servicediscovery:DiscoverInstances"], "Resource": "*",
     "Condition": {"StringEquals": {"servicediscovery:NamespaceName": "weft.internal"}}},
    {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "arn:aws:secretsmanager:*:secret:db-*"},
    {"Effect": "Deny", "Action": "secretsmanager:*", "Resource": "arn:aws:secretsmanager:*:secret:db-root*"},
]}


def call(action, resource="*", context=None):
    return Call("AKID", action, resource, context or {}, "test")


class Evaluation(unittest.TestCase):
    def test_resource_scoped_allow(self):
        self.assertTrue(allowed([POLICY], call("servicediscovery:UpdateInstanceCustomHealthStatus", ARN)))
        self.assertFalse(allowed([POLICY], call("servicediscovery:UpdateInstanceCustomHealthStatus", ARN + "x")))
        self.assertFalse(allowed([POLICY], call("servicediscovery:RegisterInstance", ARN)))

    def test_conditions_need_their_key(self):
        ok = {"servicediscovery:NamespaceName": "weft.internal"}
        self.assertTrue(allowed([POLICY], call("servicediscovery:DiscoverInstances", "*", ok)))
        other = {"servicediscovery:NamespaceName": "other"}
        self.assertFalse(allowed([POLICY], call("servicediscovery:DiscoverInstances", "*", other)))
        self.assertFalse(allowed([POLICY], call("servicediscovery:DiscoverInstances", "*")))

    def test_wildcards_and_explicit_deny(self):
        self.assertTrue(allowed([POLICY], call("secretsmanager:GetSecretValue", "arn:aws:secretsmanager:r:1:secret:db-abc")))
        self.assertFalse(allowed([POLICY], call("secretsmanager:GetSecretValue", "arn:aws:secretsmanager:r:1:secret:db-root-1")))
        self.assertFalse(allowed([POLICY], call("secretsmanager:GetSecretValue", "arn:aws:secretsmanager:r:1:secret:tls")))


if __name__ == "__main__":
    unittest.main()
