FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY tasks ./tasks
COPY config ./config
RUN pip install --no-cache-dir .
ENTRYPOINT ["canary"]
