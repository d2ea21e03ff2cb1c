# The Strategy Manager API. Build: docker build -t strategy-manager .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STRATEGY_MANAGER_DATA_DIR=/data

# A fixed numeric id, so USER resolves without the image's /etc/passwd.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app \
        --shell /usr/sbin/nologin app \
    && mkdir -p /app /data \
    && chown app:app /data

WORKDIR /app

# Dependencies come from pyproject.toml; the package itself is installed with them.
COPY pyproject.toml README.md ./
COPY backtest_data_module ./backtest_data_module
RUN pip install --no-cache-dir .

USER 10001:10001

EXPOSE 8000
VOLUME ["/data"]

# curl is not in the slim image; Python's urllib does the same job.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]

CMD ["uvicorn", "backtest_data_module.strategy_manager.main:app", "--host", "0.0.0.0", "--port", "8000"]
