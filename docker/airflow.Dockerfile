# Every Airflow component of docker-compose.yml: Airflow's image (the version uv.lock pins) with this
# package's wheel and its dependencies (psycopg 3, boto3, xgboost, MLflow's client, GX, Evidently).
# The image holds the package only: the project (dags/, expectations/) is mounted, as a team's own is.
FROM apache/airflow:3.3.2-python3.11 AS wheel
COPY --chown=airflow:root pyproject.toml README.md /src/
COPY --chown=airflow:root pipelines /src/pipelines
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /home/airflow/dist /src

FROM apache/airflow:3.3.2-python3.11
COPY --from=wheel /home/airflow/dist /tmp/dist
RUN pip install --no-cache-dir "apache-airflow==3.3.2" /tmp/dist/pipelines-*.whl
# The shared home (a named volume takes the owner of the folder it is mounted on).
USER root
RUN mkdir -p /data/pipelines && chown airflow:root /data/pipelines && rm -rf /tmp/dist
USER airflow
