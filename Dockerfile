# amdgpu_top_web container image: the program and its page, nothing else.
#
#   docker build -t amdgpu_top_web .
#   docker run -d --name gpu-web -p 8080:8080 --read-only amdgpu_top_web
#
# Base image: distroless Python (Debian 12, Python 3.11, security updates from
# Debian). It has no shell, no package manager and no curl/wget, which fits a
# read-only monitor whose whole run-time dependency is the standard library.
# python:3.12-slim was the alternative; it carries apt, dpkg and bash, and
# stripping them by hand is fragile. Distroless publishes no version tags, only
# rolling ones (:nonroot, :debug): for reproducible builds pin the digest too,
# FROM gcr.io/distroless/python3-debian12:nonroot@sha256:<digest>
# (`docker buildx imagetools inspect gcr.io/distroless/python3-debian12:nonroot`
# prints it). The page loads its ES modules from the pinned CDN, or from
# APP_VENDOR_DIR (a read-only volume) on hosts without internet.
#
# What the container needs from the host: nothing but /sys and /proc, which every
# container has. The monitor reads world-readable sysfs/hwmon files and never
# opens /dev/dri or /dev/kfd, so neither --device nor --group-add is needed.
# Process top sees only the container's own processes unless it runs with
# --pid=host (see README, "Docker").

# -- stage 1: account files --------------------------------------------------
# The distroless base has users root, nobody, nonroot (65532) and groups root,
# nobody, tty, staff, nonroot, but no video or render group. The :debug variant
# of the same image has a busybox shell: take its /etc/group and add both
# groups with nonroot as a member. Fixed GIDs: 44 is video on Debian and Ubuntu
# (other distributions differ); render has no fixed GID anywhere (distributions
# allocate it at install time), so 992 is a placeholder. Host GIDs differ: pass the host's
# numbers at build time (--build-arg RENDER_GID=$(getent group render | cut -d: -f3))
# or at run time (--group-add <gid>), and only if you give the container a device.
FROM gcr.io/distroless/python3-debian12:debug AS accounts
ARG VIDEO_GID=44
ARG RENDER_GID=992
SHELL ["/busybox/sh", "-eu", "-c"]
RUN cp /etc/group /tmp/group \
    && printf 'video:x:%s:nonroot\nrender:x:%s:nonroot\n' "${VIDEO_GID}" "${RENDER_GID}" >> /tmp/group \
    && mkdir -p /tmp/history && chmod 0700 /tmp/history

# -- stage 2: the image --------------------------------------------------------
FROM gcr.io/distroless/python3-debian12:nonroot

LABEL org.opencontainers.image.title="amdgpu_top_web" \
      org.opencontainers.image.description="Read-only web dashboard for live AMD GPU telemetry" \
      org.opencontainers.image.licenses="MIT"

COPY --from=accounts /tmp/group /etc/group

WORKDIR /app
# The two files, owned by root and read-only to the service user.
COPY amdgpu_top_web.py index.html /app/

# History (README, "History"): the one thing written, on a volume owned by the
# service user, so --read-only still works. Name it to keep history across
# `docker rm`: -v gpu-web-history:/var/lib/amdgpu_top_web
COPY --from=accounts --chown=65532:65532 /tmp/history /var/lib/amdgpu_top_web
VOLUME ["/var/lib/amdgpu_top_web"]

# Unbuffered logs; no .pyc writes (the root filesystem may be read-only).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_HISTORY_PATH=/var/lib/amdgpu_top_web/history.sqlite3

# 65532 = nonroot of the distroless base. Numeric, so Kubernetes' runAsNonRoot
# can verify it; uid only (no ":gid"), so the runtime still takes the primary
# group and the supplementary groups (video, render) from /etc/passwd and /etc/group.
USER 65532

EXPOSE 8080

# Liveness from inside the container without curl or wget: the image's own
# Python fetches /api/healthz over loopback (proxy variables ignored). The port
# comes from APP_LISTEN_ADDR, so change the port with -e APP_LISTEN_ADDR=:9000,
# not with the --listen flag, or the check will look at 8080.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "/app/amdgpu_top_web.py", "--healthcheck"]

# SIGTERM (docker stop) closes every WebSocket with 1001 and exits 0 within 2 s.
ENTRYPOINT ["python3", "/app/amdgpu_top_web.py"]
