"""``deploy/iam/warden-policy.json`` against what Warden really calls.

Every AWS call that Warden's own clients made during this run (in the test process and
in every ``warden`` process the tests started) was appended to ``conftest.AWS_CALLS``
as the IAM action it needs (``warden/runtime/aws.py``). The policy must allow each of them, and
list nothing that no code path called. These tests run after all the others.
"""

from __future__ import annotations

import json
import os
import re
import string

import pytest

from conftest import AWS_CALLS, ROOT, WHOLE_RUN

POLICY = ROOT / "deploy" / "iam" / "warden-policy.json"
#: actions AWS checks on Warden's behalf inside a call of another action, never called
#: themselves: RunTask passes the task definition's task and execution roles to ECS
IMPLIED_BY = {"iam:PassRole": "ecs:RunTask"}

pytestmark = pytest.mark.after_all


def statements() -> dict[str, set[str]]:
    """The policy's actions by statement ``Sid``."""
    document = json.loads(POLICY.read_text())
    return {s["Sid"]: set(s["Action"]) for s in document["Statement"] if s["Effect"] == "Allow"}


def allowed() -> set[str]:
    return set().union(*statements().values())


def called() -> set[str]:
    if not AWS_CALLS.exists():
        return set()
    return set(AWS_CALLS.read_text().split())


def whole_run(session: pytest.Session) -> bool:
    """Did this run run every test module, with nothing deselected?"""
    modules = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    ran = {item.path.name for item in session.items}
    return not WHOLE_RUN["deselected"] and modules <= ran


def not_in_a_partial_run(session: pytest.Session, why: str) -> None:
    """Skip, saying ``why``, when this run is not the whole suite; in CI, which runs the
    whole suite, never skip: fail."""
    if whole_run(session):
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the whole suite: {why}")
    pytest.skip(why)


def test_every_aws_call_warden_made_is_allowed_by_the_policy(request):
    made = called()
    if not made:
        not_in_a_partial_run(request.session, "no test of this run made an AWS call")
    assert made, f"no AWS call was recorded in {AWS_CALLS}: is WARDEN_AWS_CALL_LOG honoured?"
    missing = sorted(made - allowed())
    assert missing == [], f"Warden called these, which {POLICY.name} does not allow: {missing}"


def test_the_policy_allows_nothing_that_no_code_path_calls(request):
    not_in_a_partial_run(request.session, "only a run of the whole suite calls every code path")
    made = called()
    unused = sorted(a for a in allowed() - made if IMPLIED_BY.get(a) not in made)
    assert unused == [], f"{POLICY.name} allows these, which no test saw Warden call: {unused}"


def test_the_readme_iam_table_is_the_policy():
    readme = (ROOT / "README.md").read_text()
    [table_text] = re.findall(r"^\| statement \| actions \|\n(.*?)\n\n", readme, re.MULTILINE | re.DOTALL)
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", table_text, re.MULTILINE)
    table = {sid: set(re.findall(r"`([\w-]+:\w+)`", actions)) for sid, actions in rows}
    assert table == statements(), "README's IAM table differs from " + str(POLICY.relative_to(ROOT))


#: the template's placeholders as a user fills them (``envsubst`` does the same)
FILLED = {"REGION": "us-east-1", "ACCOUNT_ID": "123456789012", "LOAD_BALANCERS": "web-*",
          "TARGET_GROUPS": "web-*/*", "EVENTS_QUEUE": "warden-events", "AUTO_SCALING_GROUPS": "ecs-prod-*",
          "CLUSTER": "prod", "TASK_FAMILIES": "web-*", "TASK_ROLES": "app-*", "DEMAND_QUEUES": "jobs-*",
          "STEPS_OBJECTS": "ops-bucket/warden/*", "SERVICE_OBJECTS": "ops-bucket/services/*",
          "SERVICE_BUCKET": "ops-bucket", "SERVICE_PARAMETERS": "/warden/services/*"}
#: actions whose calls AWS does not scope to a resource: only they may name ``*``
UNSCOPED = {"elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeTargetHealth",
            "elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetGroupAttributes",
            "elasticloadbalancing:DescribeLoadBalancerAttributes",
            "ec2:DescribeAvailabilityZones", "ec2:DescribeInstances", "cloudwatch:GetMetricStatistics",
            "elasticbeanstalk:DescribeEnvironments", "autoscaling:DescribeAutoScalingInstances", "sts:GetCallerIdentity"}


def test_the_policy_is_scoped_wherever_aws_allows_it():
    """Every statement was ``"Resource": "*"``: a host's role could enrol it in any
    load balancer and start or stop any task in the account. The template names each
    resource by ARN (or, for the ECS calls, the cluster by the ``ecs:cluster``
    condition), with the placeholders the README lists."""
    text = POLICY.read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    assert placeholders == set(FILLED)
    readme = (ROOT / "README.md").read_text()
    assert {p for p in placeholders if f"`${{{p}}}`" in readme} == placeholders, "README lists each placeholder"
    for statement in json.loads(text)["Statement"]:
        if statement["Resource"] == "*" and not set(statement["Action"]) <= UNSCOPED:
            assert "ecs:cluster" in statement.get("Condition", {}).get("ArnEquals", {}), statement["Sid"]


def test_the_policy_is_a_document_iam_accepts(aws):
    name = f"warden-{os.getpid()}"
    filled = string.Template(POLICY.read_text()).substitute(FILLED)
    reply = aws.iam.create_policy(PolicyName=name, PolicyDocument=filled)
    stored = aws.iam.get_policy_version(PolicyArn=reply["Policy"]["Arn"],
                                        VersionId=reply["Policy"]["DefaultVersionId"])
    document = stored["PolicyVersion"]["Document"]
    if isinstance(document, str):
        document = json.loads(document)
    assert {s["Sid"] for s in document["Statement"]} == set(statements())


def test_tasks_are_started_only_of_the_services_families_and_stopped_only_if_warden_started_them():
    """``ecs:RunTask`` was allowed on every task definition and ``ecs:StopTask`` on every
    task of the cluster: a host's role could run anything, and stop any task."""
    document = json.loads(string.Template(POLICY.read_text()).substitute(FILLED))
    by_action = {a: s for s in document["Statement"] for a in s["Action"]}
    assert by_action["ecs:RunTask"]["Resource"] == "arn:aws:ecs:us-east-1:123456789012:task-definition/web-*:*"
    stop = by_action["ecs:StopTask"]
    assert stop["Resource"] == "arn:aws:ecs:us-east-1:123456789012:task/prod/*"
    assert stop["Condition"]["Null"] == {"aws:ResourceTag/warden:service": "false"}
