"""Service descriptions from S3 and SSM Parameter Store (on the moto server), polled
with the same rules as files: a broken object keeps its last good version, a new one
adds its services, a source that is unchanged costs one cheap call a poll."""

from __future__ import annotations

import json
import time

from conftest import AWS_CALLS, RUN, eventually, ip_of


def web(name: str, port: int = 8080) -> str:
    return json.dumps({"name": name, "containerName": f"wt-{RUN}-{name}", "port": port,
                       "loadBalancerUrl": f"{name}.example.com"})


def calls(action: str) -> int:
    return AWS_CALLS.read_text().splitlines().count(action) if AWS_CALLS.exists() else 0


def test_an_s3_prefix_is_polled_broken_objects_keep_their_last_good_version(aws, warden, redx, containers):
    bucket = f"warden-services-{RUN}".lower()
    s3 = aws.s3
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="services/web.json", Body=web("web").encode())
    s3.put_object(Bucket=bucket, Key="services/notes.txt", Body=b"not a service")
    w = warden(None, serviceDescriptionFilename=f"s3://{bucket}/services/", serviceSourcePollSeconds=1,
               handlers=["redx"])
    checked = w.command("validate")
    assert checked.returncode == 0 and "1 service(s)" in checked.stderr, checked.stdout + checked.stderr
    w.start("registrar")
    one = containers.run("web")
    eventually(lambda: f"{ip_of(one)}:8080" in redx.hgetall("backend:web"), 10, what="routed from S3")

    # Unchanged: one listing a poll, no object fetched again.
    listed, fetched = calls("s3:ListBucket"), calls("s3:GetObject")
    time.sleep(3.5)
    assert 2 <= calls("s3:ListBucket") - listed <= 5, "about one listing a second"
    assert calls("s3:GetObject") == fetched, "an unchanged object was fetched again"

    s3.put_object(Bucket=bucket, Key="services/web.json", Body=b"{ broken")
    eventually(lambda: f"s3://{bucket}/services/web.json: -: invalid JSON" in w.log(), 10,
               what="the broken object named")
    assert f"{ip_of(one)}:8080" in redx.hgetall("backend:web"), "a broken object keeps its last good version"

    s3.put_object(Bucket=bucket, Key="services/api.json", Body=web("api").encode())
    api = containers.run("api")
    eventually(lambda: f"{ip_of(api)}:8080" in redx.hgetall("backend:api"), 10, what="a new object's service")


def test_an_ssm_path_gives_the_services_and_a_missing_source_keeps_them(aws, warden, redx, containers):
    path = f"/warden-{RUN}/services"
    aws.ssm.put_parameter(Name=f"{path}/web", Value=web("web"), Type="String")
    w = warden(None, serviceDescriptionFilename=f"ssm:{path}", serviceSourcePollSeconds=1, handlers=["redx"])
    w.start("registrar")
    one = containers.run("web")
    eventually(lambda: f"{ip_of(one)}:8080" in redx.hgetall("backend:web"), 10, what="routed from SSM")
    aws.ssm.put_parameter(Name=f"{path}/web", Value=web("web", 8081), Type="String", Overwrite=True)
    eventually(lambda: "service source" in w.log() and redx.hgetall("backend:web") == {}, 10,
               what="the changed parameter in force (its port has no server)")
    w.stop()

    missing = warden(None, serviceDescriptionFilename="s3://no-such-bucket-for-warden/services.json",
                     handlers=["redx"])
    result = missing.command("validate")
    assert result.returncode == 2 and "s3://no-such-bucket-for-warden/services.json: -: " in result.stdout, \
        result.stdout + result.stderr


def test_an_emptied_prefix_or_path_keeps_the_services_and_says_so(aws, warden, redx, containers):
    """An empty listing was read as "no services" after one poll and retired every
    service (a missing single object correctly kept them). A document holding [] is
    how an operator says "none"."""
    from conftest import free_port, http_get

    bucket = f"warden-empty-{RUN}".lower()
    aws.s3.create_bucket(Bucket=bucket)
    aws.s3.put_object(Bucket=bucket, Key="services/web.json", Body=web("web").encode())
    metrics = free_port()
    w = warden(None, serviceDescriptionFilename=f"s3://{bucket}/services/", serviceSourcePollSeconds=1,
               handlers=["redx"], metricsAddress=f"127.0.0.1:{metrics}").start("registrar")
    one = containers.run("web")
    eventually(lambda: f"{ip_of(one)}:8080" in redx.hgetall("backend:web"), 10, what="routed from S3")
    aws.s3.delete_object(Bucket=bucket, Key="services/web.json")
    eventually(lambda: "lists no service document; keeping the 1 services in force" in w.log(), 10,
               what="the empty listing named")
    time.sleep(2.5)  # polls and sweeps
    assert redx.hgetall("backend:web") == {f"{ip_of(one)}:8080": "0"}, "an empty listing retired the service"
    assert redx.get("frontend:web.example.com") == "web"
    status, body = http_get(f"http://127.0.0.1:{metrics}/readyz")
    assert status == 503 and "lists no service document" in body, body
    assert f"service source: s3://{bucket}/services/: lists no service document" in w.command("status").stdout
    aws.s3.put_object(Bucket=bucket, Key="services/none.json", Body=b"[]")
    eventually(lambda: redx.hgetall("backend:web") == {}, 10, what="[] retires them")
    eventually(lambda: http_get(f"http://127.0.0.1:{metrics}/readyz")[0] == 200, 5, what="ready again")

    path = f"/warden-empty-{RUN}/services"
    aws.ssm.put_parameter(Name=f"{path}/web", Value=web("web"), Type="String")
    w.stop()
    w2 = warden(None, serviceDescriptionFilename=f"ssm:{path}", serviceSourcePollSeconds=1,
                handlers=["redx"]).start("registrar")
    eventually(lambda: f"{ip_of(one)}:8080" in redx.hgetall("backend:web"), 10, what="routed from SSM")
    aws.ssm.delete_parameter(Name=f"{path}/web")
    eventually(lambda: "lists no service document; keeping the 1 services in force" in w2.log(), 10,
               what="the emptied path named")
    time.sleep(2.5)
    assert redx.hgetall("backend:web") == {f"{ip_of(one)}:8080": "0"}, "an emptied path retired the service"
