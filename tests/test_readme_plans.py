"""README commands, the compile-only TPU plans (the TPU compiler is slow even for tiny models).

The recipes and checks live in test_readme_commands.py (which also checks that every README command
has one); this module runs the "plan" group in its own workspace, so the suite's two processes run
it beside the other groups.
"""
import pytest
from test_readme_commands import Workspace, group, run_recipe


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("readme_plan_workspace"))


@pytest.mark.slow
@pytest.mark.parametrize("name", group("plan"))
def test_readme_command(workspace, name):
    run_recipe(workspace, name)
