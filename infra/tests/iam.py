"""Evaluates IAM identity policies against the AWS calls a process made.

moto records every request it receives but enforces IAM only against the
resource "*", so a statement scoped to an ARN never matches there. This
module does what IAM does for the subset of the policy language Weft's
templates use: Allow and Deny statements, Action/NotAction and Resource
with wildcards, and the StringEquals/StringLike (and their Not forms)
condition operators; an explicit Deny wins, no Allow means denied.

Each recorded request is turned into (principal access key, action,
resource ARN, condition context) by `describe`, which knows the calls Weft
makes; a call it does not know fails loudly, so a new call cannot slip
past the check.
"""

import base64
import fnmatch
import json
import re

# What each call acts on, per IAM's service authorization reference.
# servicediscovery: the instance calls act on the service; discovery and
# listing support no resource-level permissions ("*") and discovery carries
# the namespace name as a condition key.
SERVICE_SCOPED = {"RegisterInstance", "DeregisterInstance", "UpdateInstanceCustomHealthStatus",
                  "GetInstance", "ListInstances", "GetInstancesHealthStatus", "GetService"}
UNSCOPED = {"ListNamespaces", "ListServices", "GetOperation", "ListOperations"}
NAMESPACE_KEYED = {"DiscoverInstances", "DiscoverInstancesRevision"}
# acm-pca: these act on the certificate authority.
PCA_CA_SCOPED = {"IssueCertificate", "GetCertificate", "GetCertificateAuthorityCertificate"}


class Call:
    """One AWS call: who made it, what it did, on what."""

    def __init__(self, access_key, action, resource, context, summary):
        self.access_key = access_key
        self.action = action
        self.resource = resource
        self.context = context
        self.summary = summary

    def __repr__(self):
        return f"{self.action} on {self.resource} {self.context or ''} ({self.summary})"


def access_key_of(headers):
    auth = headers.get("Authorization") or headers.get("authorization") or ""
    m = re.search(r"Credential=([^/]+)/", auth)
    return m.group(1) if m else None


def parameter_arn(name, region, account):
    if name.startswith("arn:"):
        return name
    return f"arn:aws:ssm:{region}:{account}:parameter{'' if name.startswith('/') else '/'}{name}"


def describe(entry, service_arns, secret_arns, region="us-east-1", account="123456789012"):
    """A recorded moto request as a Call (or a list of them, for a call on
    several resources), or None for moto's own API."""
    headers = entry["headers"]
    target = headers.get("X-Amz-Target") or headers.get("x-amz-target")
    if entry["url"].split("?")[0].rstrip("/").endswith(("/moto-api", "/moto-api/reset")) or "/moto-api/" in entry["url"]:
        return None
    body = entry.get("body") or ""
    if entry.get("body_encoded"):
        body = base64.b64decode(body).decode("utf-8", "replace")
    key = access_key_of(headers)
    if not target:
        # Query-protocol calls (STS, IAM): action in the form body.
        params = dict(p.split("=", 1) for p in body.split("&") if "=" in p)
        action = params.get("Action", "?")
        service = "sts" if "sts" in (headers.get("Authorization") or "") else "iam"
        return Call(key, f"{service}:{action}", "*", {}, action)
    prefix, op = target.split(".", 1)
    data = json.loads(body or "{}")
    if prefix.startswith("Route53AutoNaming"):
        action = f"servicediscovery:{op}"
        if op in SERVICE_SCOPED:
            resource = service_arns.get(data.get("ServiceId"), f"unknown-service:{data.get('ServiceId')}")
            return Call(key, action, resource, {}, f"{op} {data.get('InstanceId', '')}")
        if op in NAMESPACE_KEYED:
            return Call(key, action, "*", {"servicediscovery:NamespaceName": data.get("NamespaceName")}, op)
        if op in UNSCOPED:
            return Call(key, action, "*", {}, op)
        raise ValueError(f"the IAM check does not know servicediscovery:{op}; add it to iam.py")
    if prefix == "secretsmanager":
        secret = data.get("SecretId", "")
        return Call(key, f"secretsmanager:{op}", secret_arns.get(secret, secret), {}, op)
    if prefix == "AmazonSSM" and op in ("GetParameters", "GetParameter"):
        # A parameter is named by its name or its ARN; IAM sees the ARN,
        # one resource per parameter asked for.
        names = data.get("Names") or [data.get("Name", "")]
        return [Call(key, f"ssm:{op}", parameter_arn(n, region, account), {}, f"{op} {n}") for n in names]
    if prefix == "ACMPrivateCA" and op in PCA_CA_SCOPED:
        # Each acts on the CA; IssueCertificate carries the template as a
        # condition key.
        context = {"acm-pca:TemplateArn": data.get("TemplateArn")} if op == "IssueCertificate" else {}
        return Call(key, f"acm-pca:{op}", data.get("CertificateAuthorityArn", ""), context, op)
    raise ValueError(f"the IAM check does not know {target}; add it to iam.py")


def _list(value):
    return value if isinstance(value, list) else [value]


def _matches(pattern, value):
    return fnmatch.fnmatchcase(value.lower(), pattern.lower()) if "*" in pattern or "?" in pattern \
        else pattern.lower() == value.lower()


def _resource_matches(pattern, value):
    # Resource ARNs are case-sensitive; wildcards span segments.
    return fnmatch.fnmatchcase(value, pattern)


def _condition_holds(condition, context):
    for operator, tests in (condition or {}).items():
        negate = operator.startswith("StringNot")
        like = operator.endswith("Like")
        if operator not in ("StringEquals", "StringLike", "StringNotEquals", "StringNotLike"):
            raise ValueError(f"the IAM check does not evaluate condition operator {operator}")
        for key, wanted in tests.items():
            actual = context.get(key)
            if actual is None:
                if not negate:
                    return False
                continue
            hit = any(fnmatch.fnmatchcase(actual, w) if like else actual == w for w in _list(wanted))
            if hit == negate:
                return False
    return True


def _statement_applies(st, call):
    if "Action" in st:
        if not any(_matches(a, call.action) for a in _list(st["Action"])):
            return False
    elif "NotAction" in st:
        if any(_matches(a, call.action) for a in _list(st["NotAction"])):
            return False
    if not any(_resource_matches(r, call.resource) for r in _list(st.get("Resource", "*"))):
        return False
    return _condition_holds(st.get("Condition"), call.context)


def allowed(documents, call):
    """Whether IAM would allow `call` under these identity policy documents."""
    statements = [st for doc in documents for st in _list(doc["Statement"])]
    if any(st["Effect"] == "Deny" and _statement_applies(st, call) for st in statements):
        return False
    return any(st["Effect"] == "Allow" and _statement_applies(st, call) for st in statements)


def denied_calls(documents_by_key, calls):
    """The calls their principal's policies would deny; a call by a key not
    in `documents_by_key` (the rehearsal's own set-up) is not checked."""
    return [c for c in calls if c.access_key in documents_by_key and not allowed(documents_by_key[c.access_key], c)]
