# Warden's container image. Run one on every container host, beside the ECS agent, with
# the Docker socket's folder mounted (a mount of the socket file itself goes stale when
# dockerd restarts) and the host's network (Redx's Redis and the instance metadata are
# the host's):
#
#   docker run -d --name warden --network host --restart unless-stopped \
#     --group-add "$(stat -c %g /var/run/docker.sock)" --read-only --cap-drop ALL \
#     --security-opt no-new-privileges \
#     -v /var/run:/var/run -v /etc/warden:/etc/warden:ro redx-warden
#
# It runs as an unprivileged user (uid 10001) that reaches the Docker socket through
# the socket's group, given at run time (its number differs from host to host); it
# needs no capability and writes nothing to its file system.
#
# BASE is any Debian-based image with python3 (3.9 or newer) and its venv module.
# Build with scripts/build-image.sh, which tags the image with Warden's version; with
# --offline it builds on a debootstrap base and wheels made on the host (PIP_NO_INDEX and
# PIP_FIND_LINKS below), for machines where neither an image nor the package index can
# be reached from inside a build.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG PIP_NO_INDEX=
ARG PIP_FIND_LINKS=
# The version the image is tagged with; the build fails if the package says otherwise.
ARG VERSION=
# The package's sources, and build/image-wheels when an offline build made it.
COPY . /src
RUN python3 -m venv /opt/warden \
 && /opt/warden/bin/pip install --no-cache-dir --disable-pip-version-check /src \
 && /opt/warden/bin/warden --version \
 && if [ -n "$VERSION" ]; then test "$(/opt/warden/bin/warden --version)" = "warden $VERSION"; fi \
 && find /opt/warden -name __pycache__ -prune -exec rm -rf {} + \
 && rm -rf /opt/warden/lib/python3*/site-packages/pip /opt/warden/bin/pip*

FROM ${BASE}
ARG VERSION=
LABEL org.opencontainers.image.title="redx-warden" \
      org.opencontainers.image.description="Redx routes, load-balancer enrolment and ECS task counts, kept in step with the containers running" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /opt/warden /opt/warden
ENV PATH=/opt/warden/bin:$PATH \
    WARDEN_CONFIG=/etc/warden/config.json \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# SIGTERM finishes the step in flight, hands leadership back and exits 0.
STOPSIGNAL SIGTERM
# /livez on metricsAddress (healthy when none is set): only a wedged Warden fails it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "warden.runtime.health"]
# No root: the Docker socket's group (--group-add) is all Warden needs of the host.
USER 10001:10001
ENTRYPOINT ["warden"]
CMD ["run"]
