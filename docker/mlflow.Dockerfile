# The MLflow tracking server (the version uv.lock pins) with the drivers docker-compose.yml's stores
# need: psycopg for the PostgreSQL backend store, boto3 for the S3 artifact store.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow==3.17.2" "psycopg[binary]==3.3.9" "boto3==1.44.5"
