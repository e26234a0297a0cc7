"""The Streamlit app, page by page, through streamlit.testing.v1.AppTest.

Every page renders without an exception; its main widgets change what it shows; the numbers in
its charts are the numbers of a trace recorded independently here. Checkpoints live in a
temporary directory (``MANN_CHECKPOINTS``), so nothing touches the repository's.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

import mann
from mann import catalog
from mann.catalog import untrained_model
from mann.evaluate import generalisation_frame
from mann.inputs import edited_input, record, sample_input
from mann.tasks import TASKS, make_task
from ui import choosing, server, sidebar

torch.set_num_threads(1)

APP = str(Path(__file__).resolve().parent.parent / "app.py")
COPY = make_task("copy")
PAGES = [path for name, path in server.PAGES.items() if name != "home"]


def save_copy_model(directory: Path, name: str, arch: str, **sizes) -> Path:
    config = mann.ModelConfig(
        arch=arch, input_size=COPY.input_size, output_size=COPY.output_size, hidden_size=16,
        memory_size=sizes.pop("memory_size", 16), word_size=6, **sizes,
    )
    torch.manual_seed(len(name))
    model = mann.build_model(config)
    return mann.save(
        model, directory / name, task="copy", task_options=dataclasses.asdict(COPY),
        metrics={"bit_errors": 0.05, "step": 100},
    )


@pytest.fixture(autouse=True)
def navigation_like_the_server(monkeypatch):
    """Run app.py (and its sidebar) on every AppTest run, as the server does.

    AppTest (streamlit 1.67) resets ``PagesManager.uses_pages_directory`` before every run, so
    an app with a ``pages/`` folder falls back to the old folder-based navigation from the
    second run on and executes the page file alone, without app.py. The server sets the flag
    to False once ``st.navigation`` has been called and never resets it; so do we.
    """
    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture
def checkpoints(tmp_path, monkeypatch) -> Path:
    save_copy_model(tmp_path, "ntm-copy", "ntm")
    save_copy_model(tmp_path, "dnc-copy", "dnc", memory_size=12, read_heads=2)
    monkeypatch.setenv("MANN_CHECKPOINTS", str(tmp_path))
    return tmp_path


MULTI_COPY = make_task("multi_copy")


@pytest.fixture
def multi_copy_checkpoints(checkpoints) -> Path:
    """Small untrained stand-ins for the shipped multi-copy models, beside the copy ones."""
    for name, arch in (("ntm-multi-copy", "ntm"), ("dnc-multi-copy", "dnc")):
        config = mann.ModelConfig(
            arch=arch, input_size=MULTI_COPY.input_size, output_size=MULTI_COPY.output_size,
            hidden_size=16, memory_size=10, word_size=6,
        )
        torch.manual_seed(len(name))
        mann.save(mann.build_model(config), checkpoints / name, task="multi_copy",
                  task_options=dataclasses.asdict(MULTI_COPY))
    return checkpoints


@pytest.fixture
def no_checkpoints(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MANN_CHECKPOINTS", str(tmp_path / "none"))
    return tmp_path


def start(page: str | None = None) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60).run()
    if page is not None:
        app.switch_page(page).run()
    assert not app.exception, [element.value for element in app.exception]
    return app


def decode(value) -> np.ndarray:
    """A plotly JSON array: plain list, or base64 typed array ``{dtype, bdata, shape}``."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = [int(n) for n in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape)
    return np.asarray(value, dtype=float)


def charts(app: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]


def frame_values(spec: dict, step: int, name: str, nth: int = 0) -> np.ndarray:
    """z of the ``nth`` trace named ``name`` in frame ``step``."""
    indices = [i for i, trace in enumerate(spec["data"]) if trace.get("name") == name]
    frame = spec["frames"][step]
    return decode(frame["data"][list(frame["traces"]).index(indices[nth])]["z"])


def expected_trace(directory: Path, name: str, length: int = 20, seed: int = 0):
    model = mann.load(directory / name)
    return record(model, sample_input(COPY, length, seed))


def test_every_page_is_served_through_app_py_even_when_streamlit_routes_by_file():
    # A fresh server routes its first request by the pages/ directory (streamlit#8860): the
    # file must be named after its URL (else a "Page not found" dialog), and its first
    # statement must hand the run to app.py (else it is served without the navigation and
    # sidebar). tests/test_browser.py checks the effect for two pages; this checks them all.
    import ast

    root = Path(APP).parent
    navigation = ast.parse((root / "app.py").read_text())
    url_paths = {
        keyword.value.value: ast.unparse(call.args[0])
        for call in ast.walk(navigation)
        if isinstance(call, ast.Call) and ast.unparse(call.func) == "st.Page"
        for keyword in call.keywords
        if keyword.arg == "url_path"
    }
    assert set(url_paths) == set(server.PAGES) - {"home"}
    for url_path, page in url_paths.items():
        assert page == f"server.PAGES[{url_path!r}]"
        assert Path(server.PAGES[url_path]).stem == url_path
    for path in server.PAGES.values():
        body = [
            statement
            for statement in ast.parse((root / path).read_text()).body
            if not isinstance(statement, (ast.Import, ast.ImportFrom))
            and not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant))
        ]
        assert ast.unparse(body[0]) == "server.page_needs_app()", path


def test_the_sidebar_knows_every_task():
    assert set(choosing.TASK_NAMES) == set(TASKS)


@pytest.mark.parametrize("page", [None, *PAGES])
def test_every_page_renders_without_an_exception(checkpoints, page):
    app = start(page)
    assert app.title, "every page has a title"
    assert not app.error, [element.value for element in app.error]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_untrained_models_only(no_checkpoints, page):
    app = start(page)
    assert app.sidebar.selectbox[0].value == "untrained:ntm"
    assert not app.error, [element.value for element in app.error]


def test_the_sidebar_says_when_a_model_started_from_another_runs_weights(checkpoints):
    save_copy_model(checkpoints, "second-stage", "ntm")
    metadata = mann.checkpoint.read_metadata(checkpoints / "second-stage")
    model = mann.load(checkpoints / "second-stage")
    mann.save(model, checkpoints / "second-stage", overwrite=True, task="copy",
              task_options=metadata["task_options"], metrics={"bit_errors": 0.5, "step": 40},
              train_config={"init": "runs/first-stage-best"})  # fmt: skip
    app = start()
    app.sidebar.selectbox[0].set_value("checkpoint:second-stage").run()
    described = [c.value for c in app.sidebar.caption if "trained to" in c.value]
    assert described and described[0].endswith(
        "trained to 0.5 bit errors per sequence in 40 steps, after starting from the weights "
        "of first-stage-best."
    )
    app.sidebar.selectbox[0].set_value("checkpoint:ntm-copy").run()
    assert not any("starting from" in c.value for c in app.sidebar.caption)


@pytest.mark.parametrize("task_name", choosing.TASK_NAMES)
def test_the_sidebar_offers_every_tasks_own_lengths(no_checkpoints, task_name):
    app = start(server.PAGES["inspect"])
    app.sidebar.selectbox(key="untrained_task").set_value(task_name).run()
    assert not app.exception, [element.value for element in app.exception]
    length = app.sidebar.number_input(key=f"length:{task_name}")
    task = make_task(task_name)
    low, high = int(length.min), int(length.max)
    for edge in (low, high):  # both ends are lengths the task takes
        task.with_lengths(edge, edge)
    if task_name == "ngrams":  # a 6-gram needs five bits of context and one to predict
        assert (low, int(length.value)) == (7, 200)
    assert charts(app)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_takes_the_memoryless_lstm_baseline(checkpoints, page):
    app = start(page)
    app.sidebar.selectbox[0].set_value("untrained:lstm").run()
    assert not app.exception, [element.value for element in app.exception]
    assert not app.error, [element.value for element in app.error]
    if page == server.PAGES["inspect"]:
        (scrub, timeline) = charts(app)
        trace = record(untrained_model("lstm", COPY), sample_input(COPY, 20, 0))
        np.testing.assert_array_equal(frame_values(scrub, 5, "memory"), trace.memory[5].T)
        assert trace.memory.shape == (41, 100, 2)  # the controller's h and c per unit


def test_home_demo_compares_the_shipped_copy_models(checkpoints):
    app = start()
    assert not charts(app)
    app.button[0].click().run()
    (spec,) = charts(app)
    ntm = expected_trace(checkpoints, "ntm-copy", length=12)
    dnc = expected_trace(checkpoints, "dnc-copy", length=12)
    assert len(spec["frames"]) == ntm.steps == 25
    np.testing.assert_array_equal(frame_values(spec, 7, "memory", 0), ntm.memory[7].T)
    np.testing.assert_array_equal(frame_values(spec, 7, "memory", 1), dnc.memory[7].T)
    metrics = [metric.value for metric in app.metric]
    assert metrics == [f"{ntm.metadata['bit_errors']:g}", f"{dnc.metadata['bit_errors']:g}"]
    assert not app.warning


def test_home_demo_says_when_it_runs_untrained_models(no_checkpoints):
    app = start()
    app.button[0].click().run()
    assert charts(app)
    assert "untrained models with random weights" in app.warning[0].value


def test_inspect_chart_is_the_trace_and_follows_seed_and_length(checkpoints):
    app = start(server.PAGES["inspect"])
    scrub, timeline = charts(app)
    trace = expected_trace(checkpoints, "ntm-copy")
    assert len(scrub["frames"]) == trace.steps
    for step in (0, 20, trace.steps - 1):
        np.testing.assert_array_equal(frame_values(scrub, step, "memory"), trace.memory[step].T)
        weights = frame_values(scrub, step, "weightings")
        np.testing.assert_array_equal(weights[0], trace.write_weights[step, 0])
        np.testing.assert_array_equal(weights[1], trace.read_weights[step, 0])
    timeline_write = next(t for t in timeline["data"] if t["name"] == "write 0")
    np.testing.assert_array_equal(decode(timeline_write["z"]), trace.write_weights[:, 0].T)
    errors = app.metric[1].value
    assert errors == f"{trace.metadata['bit_errors']:g}"

    app.sidebar.number_input(key="input_seed").set_value(5).run()
    (scrub, _) = charts(app)
    other = expected_trace(checkpoints, "ntm-copy", seed=5)
    np.testing.assert_array_equal(frame_values(scrub, 10, "memory"), other.memory[10].T)
    assert not np.array_equal(other.memory[10], trace.memory[10])

    app.sidebar.number_input(key="length:copy").set_value(7).run()
    (scrub, _) = charts(app)
    assert len(scrub["frames"]) == 15
    assert app.metric[0].value == "15"


def test_inspect_shows_the_dnc_link_matrix(checkpoints):
    app = start(server.PAGES["inspect"])
    app.sidebar.selectbox[0].set_value("checkpoint:dnc-copy").run()
    scrub, _ = charts(app)
    trace = expected_trace(checkpoints, "dnc-copy")
    for step in (3, 30):
        np.testing.assert_array_equal(frame_values(scrub, step, "link"), trace.link[step])
        weights = frame_values(scrub, step, "weightings")
        np.testing.assert_array_equal(weights[-3], trace.usage[step])
    assert app.subheader[0].value == "dnc-copy"
    assert any("temporal links" in caption.value for caption in app.caption)  # the timeline's


def test_a_trace_too_big_for_frames_is_scrubbed_on_the_server(checkpoints, monkeypatch):
    from mann import figures

    monkeypatch.setattr(figures, "MAX_ANIMATION_VALUES", 1000)
    app = start(server.PAGES["inspect"])
    assert any("too big to send every step" in caption.value for caption in app.caption)
    scrub, _ = charts(app)
    assert not scrub.get("frames")
    app.slider(key="server_step:41").set_value(17).run()
    scrub, _ = charts(app)
    memory = next(t for t in scrub["data"] if t["name"] == "memory")
    trace = expected_trace(checkpoints, "ntm-copy")
    np.testing.assert_array_equal(decode(memory["z"]), trace.memory[17].T)


def test_inspect_runs_a_hand_edited_input(checkpoints):
    app = start(server.PAGES["inspect"])
    inputs = sample_input(COPY, 20, 0).inputs[0].numpy().copy()
    inputs[:20, :8] = 1.0  # all ones: the answer must be all ones too
    base_key = f"copy|{choosing.task_json(COPY)}|20|0"
    app.session_state["edits"] = {base_key: inputs}
    app.run()
    assert not app.exception
    scrub, _ = charts(app)
    strip = decode(next(t for t in scrub["data"] if t["name"] == "strip")["z"])
    np.testing.assert_array_equal(strip[:9], inputs.T)
    model = mann.load(checkpoints / "ntm-copy")
    edited = record(model, edited_input(COPY, inputs))
    assert app.metric[1].value == f"{edited.metadata['bit_errors']:g}"
    assert any("hand-edited" in info.value for info in app.info)


def test_explain_follows_step_and_head(checkpoints):
    app = start(server.PAGES["explain"])
    trace = expected_trace(checkpoints, "ntm-copy")
    app.slider[0].set_value(9).run()
    app.selectbox[0].set_value("write 0").run()
    (spec,) = charts(app)
    bars = [decode(t["y"]) for t in spec["data"] if t["type"] == "bar"]
    assert len(bars) == 4
    np.testing.assert_allclose(bars[-1], trace.write_weights[9, 0], atol=1e-5)
    np.testing.assert_array_equal(bars[0], trace.content_weights[9, 1])  # H: read 0, write 0
    assert not app.warning  # the stages reproduce the recorded weighting
    knobs = {slider.label: slider.value for slider in app.slider}  # preset to the recorded
    assert knobs["g"] == pytest.approx(float(trace.interpolation_gate[9, 1]))
    assert knobs["s[+1]"] == pytest.approx(float(trace.shift[9, 1, 2]))
    assert "NTM: content → interpolation" in app.caption[0].value

    app.sidebar.selectbox[0].set_value("checkpoint:dnc-copy").run()
    dnc = expected_trace(checkpoints, "dnc-copy")
    app.selectbox[0].set_value("read 1").run()
    (spec,) = charts(app)
    bars = [decode(t["y"]) for t in spec["data"] if t["type"] == "bar"]
    step = app.slider[0].value
    np.testing.assert_allclose(bars[-1], dnc.read_weights[step, 1], atol=1e-5)
    np.testing.assert_array_equal(bars[1], dnc.read_content_weights[step, 1])
    assert "DNC read:" in app.caption[0].value and "NTM" not in app.caption[0].value


def test_compare_rows_and_bit_errors_are_each_models(checkpoints):
    app = start(server.PAGES["compare"])
    assert app.multiselect[0].value == ["checkpoint:ntm-copy", "checkpoint:dnc-copy"]
    (spec,) = charts(app)
    ntm = expected_trace(checkpoints, "ntm-copy")
    dnc = expected_trace(checkpoints, "dnc-copy")
    np.testing.assert_array_equal(frame_values(spec, 12, "memory", 0), ntm.memory[12].T)
    np.testing.assert_array_equal(frame_values(spec, 12, "memory", 1), dnc.memory[12].T)
    table = app.dataframe[0].value
    assert list(table["bit errors on this input"]) == [
        ntm.metadata["bit_errors"], dnc.metadata["bit_errors"]
    ]
    app.multiselect[0].select("untrained:dnc").run()
    (spec,) = charts(app)
    assert len([t for t in spec["data"] if t.get("name") == "memory"]) == 3
    app.multiselect[0].set_value(["checkpoint:ntm-copy"]).run()
    assert not charts(app) and "at least two" in app.info[0].value


@pytest.mark.slow
def test_train_page_trains_saves_and_selects_the_model(checkpoints):
    app = start(server.PAGES["train"])
    for key, value in (("train_hidden", 8), ("train_memory", 8), ("train_word", 4),
                       ("train_steps", 4), ("train_batch", 2)):
        app.number_input(key=key).set_value(value)
    app.selectbox(key="train_lr_decay").set_value("cosine")
    app.button[0].click().run()  # the form's submit button
    assert not app.error, [element.value for element in app.error]
    training = app.session_state["training"]
    assert training.train_config.lr_decay == "cosine"
    assert training.wait(timeout=60) and training.error is None
    app.run()
    assert app.get("plotly_chart"), "the loss curves are drawn"
    app.text_input(key="train_name").set_value("from-the-app").run()
    save = next(button for button in app.button if button.label.startswith("Save"))
    save.click().run()
    assert (checkpoints / "from-the-app.safetensors").exists()
    assert app.session_state["model_key"] == "checkpoint:from-the-app"
    assert mann.checkpoint.read_metadata(checkpoints / "from-the-app")["metrics"]["step"] == 4


@pytest.mark.slow
def test_train_page_never_saves_over_an_existing_checkpoint(checkpoints):
    shipped = (checkpoints / "ntm-copy.safetensors").read_bytes()
    app = start(server.PAGES["train"])
    for key, value in (("train_hidden", 8), ("train_memory", 8), ("train_word", 4),
                       ("train_steps", 2), ("train_batch", 2)):
        app.number_input(key=key).set_value(value)
    app.button[0].click().run()
    assert app.session_state["training"].wait(timeout=60)
    app.run()
    app.text_input(key="train_name").set_value("ntm-copy").run()
    assert any("'ntm-copy' (a shipped model) exists already" in e.value for e in app.error)
    save = next(button for button in app.button if button.label.startswith("Save"))
    assert save.disabled
    unsaved = next(button for button in app.button if button.label.startswith("Open in"))
    assert not unsaved.disabled  # keeping it for this browser session needs no free name
    # Even a save that got past the page (two visitors racing) cannot replace the file.
    with pytest.raises(FileExistsError):
        app.session_state["training"].save(checkpoints / "ntm-copy")
    assert (checkpoints / "ntm-copy.safetensors").read_bytes() == shipped


def test_train_page_reports_impossible_parameters(checkpoints):
    app = start(server.PAGES["train"])
    app.number_input(key="train_memory").set_value(1)  # an NTM needs room for its shifts
    app.button[0].click().run()
    assert "shift_range must be at most memory_size=1" in app.error[0].value
    assert "training" not in app.session_state
    app.number_input(key="train_memory").set_value(8)
    app.number_input(key="train_hidden").set_value(8)
    app.number_input(key="train_steps").set_value(2)
    app.button[0].click().run()  # the page still works: corrected, it trains
    assert not app.error and app.session_state["training"].wait(timeout=60)


@pytest.mark.slow
def test_train_page_goes_on_training_a_checkpoints_model_and_weights(checkpoints):
    app = start(server.PAGES["train"])
    app.selectbox(key="train_init").set_value("dnc-copy")
    app.selectbox(key="train_task").set_value("priority_sort")  # not copy's widths
    app.number_input(key="train_steps").set_value(2)
    app.number_input(key="train_batch").set_value(2)
    app.button[0].click().run()
    assert "must be 10 and 8 for task 'priority_sort'" in app.error[0].value
    assert "training" not in app.session_state
    app.selectbox(key="train_task").set_value(COPY.name)
    app.button[0].click().run()
    assert not app.error, [element.value for element in app.error]
    training = app.session_state["training"]
    saved = mann.load(checkpoints / "dnc-copy")
    assert training.model_config == saved.config  # the form's NTM fields were not used
    assert training.train_config.init == str(checkpoints / "dnc-copy")
    assert training.wait(timeout=60) and training.error is None
    assert "--init" in training.result.command
    trained, started = training.model.state_dict(), saved.state_dict()
    assert any(not torch.equal(trained[name], value) for name, value in started.items())
    # Two Adam steps at lr 1e-2 move a weight by at most about 0.02: it began at the
    # checkpoint's weights, not at new ones.
    assert max(float((trained[name] - value).abs().max()) for name, value in started.items()) < 0.05


def test_train_page_takes_task_options_and_names_a_bad_one(checkpoints):
    app = start(server.PAGES["train"])
    app.selectbox(key="train_task").set_value("associative_recall")
    for key, value in (("train_hidden", 8), ("train_memory", 8), ("train_steps", 2)):
        app.number_input(key=key).set_value(value)
    app.text_input(key="train_task_options").set_value("bits=8 colour=red")
    app.button[0].click().run()
    assert "unknown option(s) colour for task 'associative_recall'" in app.error[0].value
    app.text_input(key="train_task_options").set_value("bits=8, item_length")
    app.button[0].click().run()
    assert "a task option must look like KEY=VALUE, got 'item_length'" in app.error[0].value
    assert "training" not in app.session_state
    # The first stage of ntm-pretrained-priority-sort's recipe, shortened.
    app.text_input(key="train_task_options").set_value("bits=8, item_length=1 max_items=4")
    app.button[0].click().run()
    assert not app.error, [element.value for element in app.error]
    training = app.session_state["training"]
    assert training.train_config.task_options == {"bits": 8, "item_length": 1, "max_items": 4}
    assert (training.model_config.input_size, training.model_config.output_size) == (10, 8)
    assert training.wait(timeout=60) and training.error is None
    assert "--task-option item_length=1" in training.result.command


def test_train_page_offers_each_memory_option_to_its_architecture(checkpoints):
    app = start(server.PAGES["train"])
    app.selectbox(key="train_arch").set_value("dnc")
    app.checkbox(key="train_learned_memory").check()
    app.button[0].click().run()
    assert "learned_memory is an NTM option; arch='dnc'" in app.error[0].value
    assert "training" not in app.session_state
    app.selectbox(key="train_arch").set_value("ntm")
    for key, value in (("train_hidden", 8), ("train_memory", 8), ("train_steps", 2)):
        app.number_input(key=key).set_value(value)
    app.button[0].click().run()
    training = app.session_state["training"]
    assert training.model_config.learned_memory and not training.model_config.masked_content
    assert training.wait(timeout=60) and training.error is None


def test_generalisation_plots_each_model(checkpoints):
    app = start(server.PAGES["generalisation"])
    assert app.multiselect[0].value == ["checkpoint:ntm-copy", "checkpoint:dnc-copy"]
    app.text_input[0].set_value("2, 4").run()
    app.number_input(key="generalisation_sequences").set_value(10).run()
    next(button for button in app.button if button.label == "Evaluate").click().run()
    (spec,) = charts(app)
    lines = {trace["name"]: trace for trace in spec["data"]}
    assert set(lines) == {"ntm-copy", "dnc-copy"}
    expected = generalisation_frame(
        {"ntm-copy": mann.load(checkpoints / "ntm-copy")}, COPY, [2, 4], sequences=10, seed=0
    )
    np.testing.assert_allclose(decode(lines["ntm-copy"]["y"]), expected["mean_bit_errors"])
    app.text_input[0].set_value("2, x").run()
    next(button for button in app.button if button.label == "Evaluate").click().run()
    assert "lengths must be whole numbers" in app.error[0].value
    assert charts(app), "the previous result stays"


def test_home_reuse_demo_runs_the_multi_copy_models(multi_copy_checkpoints):
    app = start()
    reuse = next(button for button in app.button if button.label == "Run the reuse demo")
    reuse.click().run()
    path, usage = charts(app)
    task = MULTI_COPY.with_rounds(6, 6)
    expected = record(mann.load(multi_copy_checkpoints / "ntm-multi-copy"),
                           sample_input(task, 5, 0))
    line = next(t for t in path["data"] if t["name"] == "ntm-multi-copy")
    np.testing.assert_array_equal(decode(line["y"]), expected.write_weights[:, 0].argmax(1))
    assert [t["name"] for t in usage["data"]] == ["dnc-multi-copy"]  # the NTM keeps no usage


def test_home_reuse_demo_names_the_checkpoints_it_needs(checkpoints):
    app = start()
    assert all(button.label != "Run the reuse demo" for button in app.button)
    assert any("ntm-multi-copy and dnc-multi-copy" in caption.value for caption in app.caption)


def test_patterns_measures_the_multi_copy_models(multi_copy_checkpoints):
    from mann.analysis import metrics_frame, summary_table
    from mann.patterns import collect_traces

    app = start(server.PAGES["patterns"])
    assert app.selectbox(key="patterns_task").value == "multi_copy"
    assert app.multiselect[0].value == ["checkpoint:ntm-multi-copy", "checkpoint:dnc-multi-copy"]
    assert not charts(app) and "press Measure" in app.info[0].value
    app.number_input(key="patterns_episodes").set_value(10)
    app.number_input(key="patterns_rounds").set_value(3).run()
    next(button for button in app.button if button.label == "Measure").click().run()
    assert not app.error, [element.value for element in app.error]

    models = {name: mann.load(multi_copy_checkpoints / name)
              for name in ("ntm-multi-copy", "dnc-multi-copy")}
    traces = collect_traces(models, MULTI_COPY.with_lengths(5, 5).with_rounds(3, 3), 10, seed=0)
    expected = summary_table(metrics_frame(traces))
    shown = app.dataframe[0].value
    assert list(shown["model"]) == ["ntm-multi-copy", "dnc-multi-copy"]
    assert shown["rewrites"].tolist() == expected["rewrites"].tolist()
    assert shown["write_locality"].tolist() == expected["write_locality"].tolist()
    path, usage, jumps, slots, gates = charts(app)
    line = next(t for t in path["data"] if t["name"] == "dnc-multi-copy")
    np.testing.assert_array_equal(
        decode(line["y"]), traces["dnc-multi-copy"][0].write_weights[:, 0].argmax(1)
    )
    assert {bar["name"] for bar in slots["data"]} == set(models)
    assert {bar["name"] for bar in gates["data"]} == {"scored steps", "unscored steps"}

    app.slider(key="patterns_episode").set_value(4).run()  # another episode, no re-recording
    (line,) = [t for t in charts(app)[0]["data"] if t["name"] == "dnc-multi-copy"]
    np.testing.assert_array_equal(
        decode(line["y"]), traces["dnc-multi-copy"][4].write_weights[:, 0].argmax(1)
    )


def test_patterns_asks_whether_priority_sort_places_by_priority(checkpoints):
    from mann.analysis import summary_table
    from mann.patterns import collect_traces, memory_frame

    task = make_task("priority_sort")
    models = {}
    for name, arch in (("dnc-priority-sort", "dnc"), ("ntm-pretrained-priority-sort", "ntm"),
                       ("ntm-priority-sort", "ntm")):
        config = mann.ModelConfig(arch=arch, input_size=task.input_size,
                                  output_size=task.output_size, hidden_size=16, memory_size=24,
                                  word_size=6)  # fmt: skip
        torch.manual_seed(len(name))
        models[name] = mann.build_model(config).eval()
        mann.save(models[name], checkpoints / name, task="priority_sort",
                  task_options=dataclasses.asdict(task))
    app = start(server.PAGES["patterns"])
    app.selectbox(key="patterns_task").set_value("priority_sort").run()
    # Both NTMs' ways of sorting and the DNC's, whatever order the files are found in.
    order = ["ntm-priority-sort", "ntm-pretrained-priority-sort", "dnc-priority-sort"]
    assert app.multiselect[0].value == [f"checkpoint:{name}" for name in order]
    models = {name: models[name] for name in order}
    app.number_input(key="patterns_episodes").set_value(10).run()
    next(button for button in app.button if button.label == "Measure").click().run()
    assert not app.error, [element.value for element in app.error]

    columns = [f"placement:{c}" for c in ("priority_fit", "slots_written", "read_steps",
                                          "read_hits")]  # fmt: skip
    expected = summary_table(memory_frame(collect_traces(models, task, 10, seed=0), task), columns)
    shown = app.dataframe[1].value
    assert list(shown["model"]) == list(models)
    for column in ("priority_fit", "slots_written", "read_steps", "read_hits"):
        shown_column = shown[column.replace("_", " ")].tolist()
        assert shown_column == expected[f"placement:{column}"].tolist(), column
    placement = next(spec for spec in charts(app)
                     if "against its priority" in spec["layout"]["title"]["text"])
    assert [t["name"].split(" (r")[0] for t in placement["data"]] == list(models)
    assert len(decode(placement["data"][0]["x"])) == 5 * 20  # five episodes of 20 inputs


def test_patterns_reports_an_episode_too_long_and_needs_two_models(multi_copy_checkpoints):
    app = start(server.PAGES["patterns"])
    app.number_input(key="patterns_length:multi_copy").set_value(20)
    app.number_input(key="patterns_rounds").set_value(20).run()
    assert "make 820 steps; the app records at most 400" in app.error[0].value
    assert all(button.label != "Measure" for button in app.button)
    app.number_input(key="patterns_rounds").set_value(2).run()
    next(button for button in app.button if button.label == "Measure").click().run()
    assert not app.error and charts(app), "corrected, it measures"
    app.multiselect[0].set_value(["checkpoint:ntm-multi-copy"]).run()
    assert "at least two" in app.info[0].value


def test_whatif_preset_runs_end_to_end(checkpoints):
    from mann.whatif import presets, whatif

    app = start(server.PAGES["whatif"])
    app.sidebar.selectbox[0].set_value("checkpoint:dnc-copy").run()
    assert "No interventions yet" in app.info[0].value
    model = mann.load(checkpoints / "dnc-copy")
    batch = sample_input(COPY, 20, 0)
    (preset,) = [p for p in presets(record(model, batch)) if "write gate" in p.name]
    next(button for button in app.button if button.label == preset.name).click().run()
    assert not app.error, [element.value for element in app.error]
    expected = whatif(model, batch, preset.interventions)
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["bit errors, with interventions"] == (
        f"{expected.intervened.metadata['bit_errors']:g}"
    )
    first = expected.first_changed_bit
    assert metrics["first changed answer"] == ("none" if first is None else f"step {first}")
    figure, compare = charts(app)
    flipped = decode(figure["data"][0]["z"])
    np.testing.assert_array_equal(flipped, expected.changed_bits.T)
    assert len(compare["frames"]) == expected.original.steps
    assert preset.name in app.info[0].value  # the prediction is shown with the run


def test_whatif_builder_adds_runs_and_removes_an_intervention(checkpoints):
    app = start(server.PAGES["whatif"])
    app.sidebar.selectbox[0].set_value("checkpoint:ntm-copy").run()
    app.selectbox(key="whatif_field").set_value("sharpening").run()
    app.number_input(key="whatif_start").set_value(3)
    app.number_input(key="whatif_stop").set_value(6)
    app.selectbox(key="whatif_head:sharpening").set_value(1)
    app.number_input(key="whatif_value:sharpening:value").set_value(1.0).run()
    next(button for button in app.button if button.label == "Add").click().run()
    assert app.session_state["whatif_list"] == [
        {"step": [3, 7], "field": "sharpening", "value": 1.0, "head": 1, "slot": None}
    ]
    assert "sharpening = 1 at steps 3-6, head 1" in app.code[0].value
    assert len(charts(app)) == 2
    next(button for button in app.button if button.label == "Remove").click().run()
    assert app.session_state["whatif_list"] == [] and not charts(app)


def test_explain_draws_a_masked_dncs_content_mask(checkpoints):
    save_copy_model(checkpoints, "dnc-masked", "dnc", memory_size=12, masked_content=True)
    app = start(server.PAGES["explain"])
    app.sidebar.selectbox[0].set_value("checkpoint:dnc-masked").run()
    app.slider[0].set_value(9).run()
    trace = expected_trace(checkpoints, "dnc-masked")
    for head, mask in (("read 0", trace.read_masks[9, 0]), ("write 0", trace.write_mask[9])):
        app.selectbox[0].set_value(head).run()
        stages, drawn = charts(app)
        np.testing.assert_allclose(decode(drawn["data"][0]["y"]), mask, rtol=1e-6)
        assert "content mask" in drawn["layout"]["title"]["text"]
    app.sidebar.selectbox[0].set_value("checkpoint:dnc-copy").run()
    assert len(charts(app)) == 1  # a plain DNC has no mask to draw


def test_explain_knobs_recompute_the_stages_and_send_them_to_whatif(checkpoints):
    app = start(server.PAGES["explain"])
    app.sidebar.selectbox[0].set_value("checkpoint:dnc-copy").run()
    app.selectbox[0].set_value("write 0").run()
    assert not any(button.label == "Try it in the run" for button in app.button)
    (before,) = charts(app)
    gate = next(slider for slider in app.slider if slider.label == "g^w")
    gate.set_value(0.0).run()
    (after,) = charts(app)
    assert len(after["data"]) == 2 * len(before["data"])  # grey recorded bars beside
    assert "with the knobs" in after["layout"]["title"]["text"]
    last = [trace for trace in after["data"] if trace["name"] == "with the knobs"][-1]
    np.testing.assert_array_equal(decode(last["y"]), 0.0)  # a shut write gate writes nothing
    next(button for button in app.button if button.label == "Try it in the run").click().run()
    listed = app.session_state["whatif_list"]
    assert [values["field"] for values in listed] == ["write_gate"]
    assert listed[0]["value"] == 0.0


def test_generalisation_preset_draws_the_papers_picture(checkpoints):
    lstm = mann.build_model(mann.ModelConfig(arch="lstm", input_size=COPY.input_size,
                                             output_size=COPY.output_size, hidden_size=8))
    mann.save(lstm, checkpoints / "lstm-copy", task="copy",
              task_options=dataclasses.asdict(COPY))  # fmt: skip
    app = start(server.PAGES["generalisation"])
    app.sidebar.selectbox[0].set_value("checkpoint:dnc-copy").run()
    preset = next(b for b in app.button if b.label.startswith("The NTM paper's picture"))
    assert "LSTM vs NTM vs DNC" in preset.label
    preset.click().run()
    assert not app.error, [element.value for element in app.error]
    (spec,) = charts(app)
    lines = {trace["name"]: trace for trace in spec["data"] if trace.get("mode")}
    assert set(lines) == {"lstm-copy", "ntm-copy", "dnc-copy"}
    assert decode(lines["lstm-copy"]["x"]).tolist() == [10, 20, 30, 40, 60, 80, 120]
    expected = generalisation_frame({"lstm-copy": mann.load(checkpoints / "lstm-copy")},
                                         COPY, [10, 20], sequences=50, seed=0)  # fmt: skip
    np.testing.assert_allclose(decode(lines["lstm-copy"]["y"])[:2], expected["mean_bit_errors"])


def start_with_link(page: str | None, **query: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60)
    for name, value in query.items():
        app.query_params[name] = value
    if page is not None:  # a link opens its page directly: the session's first run
        app.switch_page(page)
    app.run()
    assert not app.exception, [element.value for element in app.exception]
    return app


@pytest.mark.parametrize("page", [None, *PAGES])
def test_every_page_takes_its_view_from_the_link_and_writes_it_back(checkpoints, page):
    app = start_with_link(page, model="dnc-copy", length="7", seed="5")
    assert app.sidebar.selectbox[0].value == "checkpoint:dnc-copy"
    assert app.session_state["length:copy"] == 7 and app.session_state["input_seed"] == 5
    assert not app.warning or "could not be used" not in app.warning[0].value
    query = {name: app.query_params[name] for name in app.query_params}
    written = {name: value[0] if isinstance(value, list) else value
               for name, value in query.items()}  # fmt: skip
    assert {"model": "dnc-copy", "length": "7", "seed": "5"}.items() <= written.items(), written


def test_inspect_and_explain_open_at_the_linked_step_and_head(checkpoints):
    app = start_with_link(server.PAGES["inspect"], model="ntm-copy", length="6", seed="3",
                          step="4")  # fmt: skip
    scrub, _ = charts(app)
    assert scrub["layout"]["sliders"][0]["active"] == 4
    trace = expected_trace(checkpoints, "ntm-copy", length=6, seed=3)
    np.testing.assert_array_equal(frame_values(scrub, 4, "memory"), trace.memory[4].T)
    link = app.code[-1].value
    assert "model=ntm-copy" in link and "length=6" in link and "seed=3" in link
    assert "step=4" in link

    app = start_with_link(server.PAGES["explain"], model="ntm-copy", step="9", head="write 0")
    assert app.slider(key="explain_step:41").value == 9
    assert app.selectbox(key="explain_head:read 0/write 0").value == "write 0"
    assert "head=write+0" in app.code[-1].value and "step=9" in app.code[-1].value


def test_compare_takes_its_models_from_the_link(checkpoints):
    app = start_with_link(server.PAGES["compare"], model="ntm-copy",
                          models="dnc-copy,untrained:ntm")  # fmt: skip
    assert app.multiselect[0].value == ["checkpoint:dnc-copy", "untrained:ntm"]
    assert "models=dnc-copy%2Cuntrained%3Antm" in app.code[-1].value


@pytest.mark.parametrize(
    "query, problem",
    [
        ({"model": "nope"}, "model='nope' is not available here"),
        ({"length": "abc"}, "length='abc' is not a whole number"),
        ({"length": "900"}, "length=900 must lie in 1.."),
        ({"seed": "-3"}, "seed=-3 must be at least 0"),
        ({"task": "sorting"}, "task='sorting' is not one of"),
        ({"models": "dnc-copy,ghost"}, "models: 'ghost' is not available here"),
    ],
)
def test_a_bad_link_says_what_it_could_not_use_and_the_page_works(checkpoints, query, problem):
    app = start_with_link(server.PAGES["inspect"], **query)
    assert any(problem in warning.value for warning in app.warning), [w.value for w in app.warning]
    assert charts(app), "the page still draws its figures"
    app.run()  # said once, not on every rerun
    assert not any("could not be used" in warning.value for warning in app.warning)


def test_export_offers_the_trace_and_the_figures(checkpoints):
    app = start(server.PAGES["export"])
    labels = [button.label for button in app.get("download_button")]
    assert labels == [
        "Trace (.npz)", "Trace (CSV, one row per number)",
        "Scrubbable figure (HTML, works offline)", "Timeline figure (HTML, works offline)",
        "Animation (GIF)", "Animation (MP4)",
    ]
    trace = expected_trace(checkpoints, "ntm-copy")
    fields = list(app.dataframe[0].value["field"])
    assert fields == trace.available()


def test_a_bad_upload_is_an_error_and_the_app_keeps_working(checkpoints, monkeypatch):
    app = start(server.PAGES["inspect"])
    before = charts(app)
    app.session_state["pending_upload"] = ("junk.safetensors", b"\x00" * 64)
    app.run()
    assert "junk.safetensors" in app.sidebar.error[0].value
    assert app.session_state["model_key"] == "checkpoint:ntm-copy"
    assert len(charts(app)) == len(before) and not app.exception

    app.session_state["pending_upload"] = ("notes.txt", b"hello")
    app.run()
    assert "is not a checkpoint" in app.sidebar.error[0].value

    monkeypatch.setattr(catalog, "MAX_UPLOAD_BYTES", 1000)
    data = (checkpoints / "dnc-copy.safetensors").read_bytes()
    app.session_state["pending_upload"] = ("big.safetensors", data)
    app.run()
    assert "at most 0 MB" in app.sidebar.error[0].value


def test_an_uploaded_checkpoint_becomes_the_chosen_model(checkpoints, tmp_path):
    upload_dir = tmp_path / "elsewhere"
    path = save_copy_model(upload_dir, "mine", "dnc", memory_size=10)
    app = start(server.PAGES["inspect"])
    app.session_state["pending_upload"] = ("mine.safetensors", path.read_bytes())
    app.run()
    assert not app.sidebar.error
    assert app.session_state["model_key"].startswith("session:")
    assert app.subheader[0].value == "uploaded: mine.safetensors"
    scrub, _ = charts(app)
    model = mann.load(path)
    trace = record(model, sample_input(COPY, 20, 0))
    np.testing.assert_array_equal(frame_values(scrub, 5, "link"), trace.link[5])


@pytest.mark.parametrize("arch", ["sam", "sdnc"])
def test_inspect_marks_the_sparse_reads_of_untrained_sparse_memories(checkpoints, arch):
    if f"untrained:{arch}" not in [f"untrained:{a}" for a in choosing.untrained_architectures()]:
        pytest.skip(f"mann.access.{arch} is not in this checkout")
    app = start()
    app.session_state["model_key"] = f"untrained:{arch}"
    app.switch_page(server.PAGES["inspect"]).run()
    assert not app.exception and not app.error
    scrub, _ = charts(app)
    trace = record(untrained_model(arch, COPY), sample_input(COPY, 20, 0))
    index = [i for i, t in enumerate(scrub["data"]) if t.get("name") == "read positions"][0]
    frame = scrub["frames"][9]
    marks = frame["data"][list(frame["traces"]).index(index)]
    np.testing.assert_array_equal(sorted(decode(marks["x"])),
                                  sorted(trace.read_positions[9, 0]))
    timeline_note = next(c.value for c in app.caption if "NTM paper's figures" in c.value)
    assert timeline_note.split(": ", 1)[1].startswith(f"{arch.upper()} ")  # its own, not the DNC's


# ---- Learn: every lesson steps through on the shipped models -----------------------------
REPOSITORY_CHECKPOINTS = Path(APP).parent / "checkpoints"


@pytest.fixture
def shipped_checkpoints(monkeypatch) -> Path:
    monkeypatch.setenv("MANN_CHECKPOINTS", str(REPOSITORY_CHECKPOINTS))
    return REPOSITORY_CHECKPOINTS


@pytest.mark.slow
@pytest.mark.parametrize("lesson_key", ["ntm", "dnc", "memory", "sparse", "lookup", "sorting"])
def test_each_lesson_steps_through_with_a_live_view_each_step(shipped_checkpoints, lesson_key):
    from ui.lessons import LESSONS

    lesson = next(item for item in LESSONS if item.key == lesson_key)
    assert 3 <= len(lesson.steps) <= 8
    app = start(server.PAGES["learn"])
    app.radio(key="learn_lesson").set_value(lesson_key).run()
    for index, step in enumerate(lesson.steps):
        assert not app.exception and not app.error, (index, [e.value for e in app.error])
        assert app.subheader[0].value == step.title
        assert charts(app), f"step {index + 1} has a live view"
        link = next(m.value for m in app.markdown if "Open this view in its full page" in m.value)
        assert f"/{step.view.page}?" in link
        back = next(button for button in app.button if button.label == "Back")
        assert back.disabled == (index == 0)
        forward = next(button for button in app.button if button.label == "Next")
        if index == len(lesson.steps) - 1:
            assert forward.disabled
        else:
            forward.click().run()
    next(button for button in app.button if button.label == "Back").click().run()
    assert app.subheader[0].value == lesson.steps[-2].title


def test_a_lesson_without_its_model_says_so_and_offers_the_others(checkpoints):
    app = start(server.PAGES["learn"])  # only small ntm-copy and dnc-copy stand-ins here
    app.radio(key="learn_lesson").set_value("dnc").run()
    assert "needs the shipped checkpoint(s) dnc-multi-copy, ntm-multi-copy" in app.warning[0].value
    assert "How an NTM copies" in app.warning[0].value
    app.radio(key="learn_lesson").set_value("ntm").run()
    assert not app.warning and charts(app)



def test_fit_and_large_text_come_from_the_link_and_shape_the_figures(checkpoints):
    plain = start_with_link(server.PAGES["inspect"], model="ntm-copy", length="6")
    scrub, _ = charts(plain)
    assert scrub["layout"]["title"]["text"] and "font" not in scrub["layout"]
    assert plain.title, "an ordinary page has its title"

    app = start_with_link(server.PAGES["inspect"], model="ntm-copy", length="6", fit="1",
                          large="1")  # fmt: skip
    assert app.sidebar.toggle(key=sidebar.FIT_KEY).value
    assert app.sidebar.toggle(key=sidebar.LARGE_TEXT_KEY).value
    assert not app.title, "fitting the screen, the page has one line instead of a title"
    assert app.markdown[0].value.startswith("**Inspect** · ntm-copy")
    fitted, timeline = charts(app)
    assert fitted["layout"]["height"] == 560
    assert "text" not in fitted["layout"].get("title", {}), "the title line makes room"
    assert fitted["layout"]["font"]["size"] == 18
    assert timeline["layout"]["font"]["size"] == 18
    sizes = [annotation["font"]["size"] for annotation in fitted["layout"]["annotations"]]
    assert sizes and set(sizes) == {18}
    # The same frames, only drawn bigger.
    np.testing.assert_array_equal(frame_values(fitted, 3, "memory"),
                                  frame_values(scrub, 3, "memory"))  # fmt: skip
    link = app.code[-1].value
    assert "fit=1" in link and "large=1" in link

    app.sidebar.toggle(key=sidebar.FIT_KEY).set_value(False).run()
    unfitted = charts(app)[0]["layout"]
    assert app.title and unfitted["title"]["text"] and unfitted["height"] != 560
    assert unfitted["font"]["size"] == 18, "large text stays on"
    assert "fit=1" not in app.code[-1].value and "large=1" in app.code[-1].value


def test_a_bad_display_value_in_a_link_is_named(checkpoints):
    app = start_with_link(server.PAGES["inspect"], fit="yes")
    assert any("fit='yes' must be 1 (on) or 0 (off)" in warning.value for warning in app.warning)
    assert not app.sidebar.toggle(key=sidebar.FIT_KEY).value


def test_compare_and_whatif_fit_their_main_figure(checkpoints):
    app = start_with_link(server.PAGES["compare"], models="ntm-copy,dnc-copy", fit="1")
    (figure,) = charts(app)
    assert figure["layout"]["height"] == 600
    assert not app.title

    app = start_with_link(server.PAGES["whatif"], model="dnc-copy", preset="1", fit="1",
                          large="1")  # fmt: skip
    assert not app.error, [element.value for element in app.error]
    whatif_chart, side_by_side = charts(app)
    assert whatif_chart["layout"]["height"] == 420
    assert whatif_chart["layout"]["font"]["size"] == 18
    assert side_by_side["layout"]["font"]["size"] == 18


def test_whatif_takes_a_preset_or_interventions_from_the_link(checkpoints):
    from mann.intervention import Intervention
    from mann.whatif import presets, whatif

    model = mann.load(checkpoints / "dnc-copy")
    batch = sample_input(COPY, 20, 0)
    found = presets(record(model, batch))
    app = start_with_link(server.PAGES["whatif"], model="dnc-copy", preset="2")
    assert found[1].name in app.info[0].value
    expected = whatif(model, batch, found[1].interventions)
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["bit errors, with interventions"] == (
        f"{expected.intervened.metadata['bit_errors']:g}"
    )
    assert "preset=2" in app.code[-1].value

    listed = [Intervention(range(2, 5), "write_gate", 0.0).to_dict()]
    app = start_with_link(server.PAGES["whatif"], model="dnc-copy",
                          interventions=json.dumps(listed))  # fmt: skip
    assert not app.error, [element.value for element in app.error]
    assert app.session_state["whatif_list"] == listed
    expected = whatif(model, batch, [Intervention.from_dict(listed[0])])
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["bit errors, with interventions"] == (
        f"{expected.intervened.metadata['bit_errors']:g}"
    )
    assert "interventions=" in app.code[-1].value and "preset=" not in app.code[-1].value

    app = start_with_link(server.PAGES["whatif"], model="dnc-copy", preset="9")
    assert any("preset=9 does not apply" in warning.value for warning in app.warning)
    app = start_with_link(server.PAGES["whatif"], model="dnc-copy", interventions="{oops")
    assert any("interventions could not be read" in warning.value for warning in app.warning)
