"""``@task.mlsecrets(env={...})``: a TaskFlow function that runs with secrets injected,
with the same semantics as :class:`InjectSecretsOperator` (a forked child, a clean
environment, redacted output, a return value that may not hold an injected value).

    @task.mlsecrets(env={"OPENAI_API_KEY": "secret:ml/openai/api_key"})
    def train() -> dict:
        import os
        ...uses os.environ["OPENAI_API_KEY"]...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory

from airflow_provider_mlsecrets.operators.inject import InjectSecretsOperator


class _MLSecretsDecoratedOperator(DecoratedOperator, InjectSecretsOperator):  # type: ignore[misc]
    template_fields: Sequence[str] = ("env", "base_env", "op_args", "op_kwargs")
    custom_operator_name = "@task.mlsecrets"

    def __init__(self, *, python_callable: Callable[..., Any], op_args: Any, op_kwargs: Any,
                 **kwargs: Any) -> None:
        super().__init__(
            kwargs_to_upstream={"python_callable": python_callable, "op_args": op_args,
                                "op_kwargs": op_kwargs},
            python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)


def mlsecrets_task(python_callable: Callable[..., Any] | None = None,
                   multiple_outputs: bool | None = None, **kwargs: Any) -> Any:
    """The ``task.mlsecrets`` decorator (registered in ``get_provider_info()``)."""
    return task_decorator_factory(python_callable=python_callable,
                                  multiple_outputs=multiple_outputs,
                                  decorated_operator_class=_MLSecretsDecoratedOperator, **kwargs)
