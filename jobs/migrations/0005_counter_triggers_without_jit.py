"""Keep PostgreSQL's JIT away from the counter triggers.

PL/pgSQL caches a trigger's plan from its first call on a connection. When that first call
saw thousands of rows (a bulk enqueue, a large rescue), the cached plan's cost passes
jit_above_cost and every later call on the connection, however small, pays ~30 ms of JIT
compilation: claims and acknowledgements slowed a hundredfold. The triggers aggregate a
few rows; they never need JIT.
"""
from django.db import migrations

FUNCTIONS = ("portico_count_insert()", "portico_count_update()", "portico_count_delete()")


def _set_jit(value):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        for function in FUNCTIONS:
            schema_editor.execute(
                f"ALTER FUNCTION {function} SET jit = off" if value == "off"
                else f"ALTER FUNCTION {function} RESET jit"
            )

    return run


class Migration(migrations.Migration):
    dependencies = [("jobs", "0004_dashboard")]

    operations = [migrations.RunPython(_set_jit("off"), _set_jit("default"))]
