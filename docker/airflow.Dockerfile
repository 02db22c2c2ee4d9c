# Every Airflow component of docker-compose.yml: Airflow's image (the version uv.lock pins) with this
# package and its dependencies (psycopg 3, boto3, xgboost, MLflow's client, GX, Evidently).
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root . /opt/pipelines
RUN pip install --no-cache-dir "apache-airflow==3.3.2" /opt/pipelines
# The shared home (a named volume takes the owner of the folder it is mounted on).
USER root
RUN mkdir -p /data/pipelines && chown airflow:root /data/pipelines
USER airflow
