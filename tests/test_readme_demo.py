"""README commands, the demo chain: the two demo trainings, the scaling sweep, export, evaluate --model, search
(index, text query, query by example) and the search page.

The recipes and checks live in test_readme_commands.py (which also checks that every README command
has one); this module runs the "demo" group in its own workspace, so the suite's two processes run
it beside the other groups.
"""
import pytest
from test_readme_commands import Workspace, group, run_recipe


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("readme_demo_workspace"))


@pytest.mark.slow
@pytest.mark.parametrize("name", group("demo"))
def test_readme_command(workspace, name):
    run_recipe(workspace, name)
