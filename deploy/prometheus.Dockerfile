# Prometheus for deploy/compose.yaml where Docker Hub (prom/prometheus) cannot be reached: Debian
# 12's own package on any Debian 12 base, e.g. the debootstrap image deploy/smoke.sh imports.
#
#   docker build --network host --build-arg BASE_IMAGE=local/debian:bookworm \
#       -t local/prometheus:bookworm - < deploy/prometheus.Dockerfile
#   AIM_PROMETHEUS_IMAGE=local/prometheus:bookworm docker-compose -f deploy/compose.yaml up -d
#
# Debian 12 ships Prometheus 2.42 (compose pins v2.55.1 from Docker Hub); the scrape config and
# the flags compose passes mean the same in both. The entrypoint, user (nobody), data directory and
# the wget of compose's health check match prom/prometheus, so compose runs either image unchanged.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# policy-rc.d: the package's postinst must not start the service inside the build.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
    && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates prometheus wget \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /prometheus /etc/prometheus \
    && chown 65534:65534 /prometheus
# nobody:nogroup, as in prom/prometheus; numeric so that the host can resolve it.
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
HEALTHCHECK --interval=15s --timeout=5s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9090/-/ready"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
