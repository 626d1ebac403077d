"""Warden's container image, built from the top-level Dockerfile as an operator would,
but offline (``scripts/build-image.sh --offline``: a debootstrap base and wheels made on
this host, since nothing can be pulled here), then run the way the README and the ECS
task definition run it: the Docker socket mounted, the host's network, the config in
``/etc/warden``, the default command."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

import warden
from conftest import AWS_ENV, LABEL, ROOT, RUN, Warden, eventually, free_port, http_get, ip_of

IMAGE = "redx-warden:test"
STOP_TIMEOUT = 30


def docker(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="module")
def image(docker_client):
    started = time.monotonic()
    built = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh"), "--offline", IMAGE],
                           capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stdout + built.stderr
    size = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE))
    print(f"\nimage {IMAGE}: built in {time.monotonic() - started:.1f}s, {size / 1e6:.1f} MB")
    return IMAGE


def test_the_image_says_its_version_and_runs_warden_by_default(image):
    assert docker("run", "--rm", "--network", "none", image, "--version") == f"warden {warden.__version__}"
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", image))
    assert config["Labels"]["org.opencontainers.image.version"] == warden.__version__
    assert config["Entrypoint"] == ["warden"] and config["Cmd"] == ["run"]
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "-m", "warden.runtime.health"]
    assert "WARDEN_CONFIG=/etc/warden/config.json" in config["Env"]
    # The systemd unit's Documentation= path, inside the image's environment.
    docker("run", "--rm", "--network", "none", "--entrypoint", "test", image,
           "-s", "/opt/warden/share/doc/redx-warden/README.md")


def test_the_image_runs_as_an_unprivileged_user(image):
    """The image ran as root: anyone who took Warden over owned the host's Docker and the
    container's file system."""
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", image))
    assert config.get("User", "") not in ("", "0", "root", "0:0"), config.get("User")
    assert docker("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u") == "10001"


def test_the_running_image_routes_a_service_container_and_stops_cleanly(
        image, tmp_path, redx, containers, central, central_server, redx_server, moto):
    metrics = free_port()
    # The config folder the container sees as /etc/warden.
    setup = Warden(tmp_path / "etc-warden", redx_server.port,
                   [{"name": "web", "containerName": f"wt-{RUN}-web", "port": 8080,
                     "loadBalancerUrl": "web.example.com"}],
                   serviceManagementRedisAddress=f"127.0.0.1:{central_server.port}",
                   zoneCheck="none", leaseSeconds=2, guardTimeSeconds=0.5,
                   heartbeatIntervalSeconds=0.5, metricsAddress=f"127.0.0.1:{metrics}",
                   handlers=["redx"])
    name = f"warden-image-{RUN}"
    environment = dict(AWS_ENV, AWS_ENDPOINT_URL=moto, WARDEN_INSTANCE_ID="i-image",
                       WARDEN_AVAILABILITY_ZONE="us-east-1a")
    import os

    # As the README runs it: the Docker socket's group, a read-only file system, no
    # capability.
    docker("run", "-d", "--name", name, "--label", f"{LABEL}={RUN}", "--network", "host",
           "--group-add", str(os.stat("/var/run/docker.sock").st_gid), "--read-only", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges",
           "-v", "/var/run:/var/run",
           "-v", f"{setup.folder}:/etc/warden:ro",
           *[arg for key, value in environment.items() for arg in ("-e", f"{key}={value}")],
           image)
    try:
        eventually(lambda: http_get(f"http://127.0.0.1:{metrics}/livez")[0] == 200, 30,
                   what="/livez 200 from the container")
        web = containers.run("web")
        eventually(lambda: f"{ip_of(web)}:8080" in redx.hgetall("backend:web"), 10,
                   what="the container's route, written by Warden in its container")
        assert redx.get("frontend:web.example.com") == "web"
        eventually(lambda: central.hget("service-manager", "id") == "i-image", 15, what="leading")
        # The image's HEALTHCHECK command, run as Docker runs it (in the image, with its
        # environment and config), against the running Warden's /livez.
        checked = subprocess.run(["docker", "run", "--rm", "--network", "host", "-v", f"{setup.folder}:/etc/warden:ro",
                                  "--entrypoint", "python", image, "-m", "warden.runtime.health"],
                                 capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        web.stop(timeout=1)
        eventually(lambda: redx.hgetall("backend:web") == {}, 10, what="unrouted at stop")

        asked = time.monotonic()
        docker("stop", "-t", str(STOP_TIMEOUT), name, timeout=STOP_TIMEOUT + 30)
        took = time.monotonic() - asked
        print(f"\ndocker stop of the running image: {took:.2f}s")
        state = json.loads(docker("inspect", "-f", "{{json .State}}", name))
        printed = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        logs = printed.stdout + printed.stderr
        assert state["ExitCode"] == 0, logs
        assert took < STOP_TIMEOUT, f"docker stop took {took:.1f}s: it was killed, not stopped"
        assert "manager stopped" in logs and "registrar stopped" in logs, logs
        assert central.hget("service-manager", "id") is None, "leadership handed back"
        stopped = subprocess.run(["docker", "run", "--rm", "--network", "host", "-v", f"{setup.folder}:/etc/warden:ro",
                                  "--entrypoint", "python", image, "-m", "warden.runtime.health"],
                                 capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 1, "the health check passed with no Warden answering"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_the_quick_start_files_route_enrol_and_lead_from_an_empty_cluster(
        image, aws, redx, containers, central, central_server, redx_server, moto):
    """The README's quick start as written: ``deploy/quickstart/`` is the image's
    ``/etc/warden``, unchanged; the task's environment names the test's stand-ins (its
    Redis servers, moto, an instance of moto's) as an ECS task's names the real ones."""
    ami = aws.ec2.describe_images()["Images"][0]["ImageId"]
    instance = aws.ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    aws.elb.create_load_balancer(LoadBalancerName="web-elb", AvailabilityZones=["us-east-1a"],
                                 Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstancePort": 80}])
    aws.ecs.create_cluster(clusterName="my-cluster")
    metrics = free_port()
    environment = dict(AWS_ENV, AWS_ENDPOINT_URL=moto, WARDEN_INSTANCE_ID=instance,
                       WARDEN_AVAILABILITY_ZONE="us-east-1a", WARDEN_REGION="us-east-1",
                       WARDEN_SERVICE_MANAGEMENT_REDIS_ADDRESS=f"127.0.0.1:{central_server.port}",
                       WARDEN_NGINX_REDIS_ADDRESS=f"127.0.0.1:{redx_server.port}",
                       WARDEN_METRICS_ADDRESS=f"127.0.0.1:{metrics}")
    name = f"warden-quickstart-{RUN}"
    import os

    # As the README runs it: the Docker socket's group, a read-only file system, no
    # capability.
    docker("run", "-d", "--name", name, "--label", f"{LABEL}={RUN}", "--network", "host",
           "--group-add", str(os.stat("/var/run/docker.sock").st_gid), "--read-only", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges",
           "-v", "/var/run:/var/run", "-v", f"{ROOT / 'deploy' / 'quickstart'}:/etc/warden:ro",
           *[arg for key, value in environment.items() for arg in ("-e", f"{key}={value}")], image)

    def enrolled() -> bool:
        [found] = aws.elb.describe_load_balancers(LoadBalancerNames=["web-elb"])["LoadBalancerDescriptions"]
        return any(i["InstanceId"] == instance for i in found["Instances"])

    try:
        eventually(lambda: http_get(f"http://127.0.0.1:{metrics}/livez")[0] == 200, 30, what="/livez")
        web = containers.run("web")
        eventually(lambda: f"{ip_of(web)}:8080" in redx.hgetall("backend:web"), 10, what="the route")
        assert redx.get("frontend:web.example.com") == "web"
        eventually(enrolled, 15, what="this instance enrolled in web-elb")
        eventually(lambda: central.hget("service-manager", "id") == instance, 15, what="the leader elected")
        docker("stop", "-t", str(STOP_TIMEOUT), name, timeout=STOP_TIMEOUT + 30)
        state = json.loads(docker("inspect", "-f", "{{json .State}}", name))
        assert state["ExitCode"] == 0, subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
