"""The demo data that ``manage.py`` prepares once per session."""

import json
import sqlite3

import pytest

pytestmark = pytest.mark.realservice


def test_demo_data_holds_the_four_demo_models(demo_data):
    with sqlite3.connect(demo_data.data_dir / "platform.sqlite3") as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM inference_mlmodel")}
    assert names == {"iris", "breast-cancer", "diabetes", "digits"}
    fixture = json.loads(demo_data.registry_fixture.read_text())
    assert {row["model"] for row in fixture} == {"inference.mlmodel", "inference.modelversion"}
