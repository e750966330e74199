# The controller image: every `canary` command (API, workers, beat, Flower, the
# migration) and the demo service. Dependencies are exactly those of
# requirements.lock, checked against its hashes; the README says how to regenerate
# it after a change to pyproject.toml.
FROM python:3.11.9-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid: config/haproxy/haproxy.cfg gives group 10001 the runtime-API socket.
RUN groupadd --system --gid 10001 canary \
    && useradd --system --uid 10001 --gid canary --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin canary

WORKDIR /app

# Dependencies first, in their own layer: a code change does not reinstall them.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY controller ./controller
COPY tasks ./tasks
COPY config ./config
RUN pip install --no-cache-dir --no-deps .

# Numeric, so that a runtime can tell it is not root (runAsNonRoot) without /etc/passwd.
USER 10001:10001

# Without a command the image runs the API; docker-compose.yml gives every other
# service its own command and healthcheck (python -m controller.probe ...).
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "controller.probe", "http", "http://127.0.0.1:8000/healthz"]
ENTRYPOINT ["canary"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
