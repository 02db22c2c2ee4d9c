"""The only package of `pipelines` that imports Airflow.

`dags.model_dags` turns one model spec into its DAG family, one module per DAG kind (train, score,
monitor, backtest, rollback); every task goes through `context.pipeline_task`; `connections` reads
storage from Airflow connections, for tasks and for the CLI alike. Heavy libraries are imported by
the stage modules inside the task, never while a DAG file is parsed.
"""
