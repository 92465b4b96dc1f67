"""The search page in a real browser (headless Chromium): a text query lists the results, the first
one's audio plays, the metadata filter narrows them, a dropped sound searches by example; the API's
errors; the command serves on 127.0.0.1 only."""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest
from model_files import BATCH_SIZE, save_tiny_model, write_sound

import hybrid_jax
from hybrid_jax import search, serve
from hybrid_jax.index import Index

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A three-sound index of the tiny model, served by the real app from a thread."""
    import uvicorn

    root = tmp_path_factory.mktemp("serve")
    model_path = save_tiny_model(root / "model")
    folder = root / "sounds"
    write_sound(folder / "dog.wav", 3.0, seed=0)
    write_sound(folder / "rain.wav", 2.5, seed=1)
    write_sound(folder / "birds" / "morning.flac", 2.0, rate=44100, channels=2, seed=2)
    (root / "tags.csv").write_text("file_name,keywords\ndog.wav,dog;bark\nmorning.flac,birds;sing;morning\n")
    model = hybrid_jax.load_model(model_path, batch_size=BATCH_SIZE)
    search.update_index(model, folder, root / "index", root / "tags.csv", progress=False, say=lambda _: None)
    index = Index(root / "index")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(serve.create_app(model, index), host=serve.HOST, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "folder": folder, "model_path": model_path, "index": root / "index"}
    server.should_exit = True
    thread.join(timeout=10)
    index.close()


def get(url, data=None, headers=None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


def test_the_api_answers_and_names_problems(served):
    url = served["url"]
    status, body, _ = get(f"{url}/api/search?q=a+dog+barks&k=2")
    results = json.loads(body)["results"]
    assert status == 200 and len(results) == 2 and results[0]["score"] >= results[1]["score"]
    status, body, _ = get(f"{url}/api/search?q=x&filter=sing")
    assert [r["path"] for r in json.loads(body)["results"]] == ["birds/morning.flac"]
    status, body, _ = get(f"{url}/api/search?q=%20")
    assert status == 400 and "type something" in json.loads(body)["detail"]
    status, body, _ = get(f"{url}/api/search/audio", data=b"RIFF....WAVEgarbage", headers={"X-Filename": "bad.wav"})
    assert status == 400 and json.loads(body)["detail"].startswith("bad.wav: ")
    example = (served["folder"] / "rain.wav").read_bytes()
    status, body, _ = get(f"{url}/api/search/audio?k=1", data=example, headers={"X-Filename": "rain.wav"})
    assert status == 200 and json.loads(body)["results"][0]["path"] == "rain.wav"
    status, body, headers = get(f"{url}/audio/0", headers={"Range": "bytes=0-99"})
    assert status == 206 and len(body) == 100 and headers["content-type"].startswith("audio/")
    assert get(f"{url}/audio/99")[0] == 404
    status, body, _ = get(url)
    page = body.decode()
    assert status == 200 and "<script" in page and "http://" not in page and "https://" not in page  # no CDN


def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("headless Chromium is not installed: apt-get install -y chromium chromium-driver (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements.txt)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium_profile_")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    return driver, profile


def test_the_page_searches_plays_filters_and_searches_by_example(served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    driver, profile = browser()
    # A filter or a new search replaces the list's rows: a row found by one wait can be replaced
    # before it is read (a StaleElementReferenceException in CI), so rows are read inside waits
    # that retry on stale rows.
    wait = WebDriverWait(driver, 120, ignored_exceptions=(StaleElementReferenceException,))
    rows = lambda: driver.find_elements(By.CSS_SELECTOR, "#results li")  # noqa: E731
    names = lambda: [row.text.split("\n")[1] for row in rows()]  # noqa: E731
    try:
        driver.get(served["url"])
        wait.until(lambda d: "3 sounds in" in d.find_element(By.ID, "info").text)
        driver.find_element(By.ID, "query").send_keys("a dog barks", Keys.ENTER)
        wait.until(lambda d: len(rows()) == 3)
        texts = [row.text for row in rows()]
        assert {t.split("\n")[1] for t in texts} == {"dog.wav", "rain.wav", "birds/morning.flac"}
        scores = [float(t.split("score ")[1]) for t in texts]
        assert scores == sorted(scores, reverse=True)
        assert "3 results for “a dog barks”" in driver.find_element(By.ID, "status").text
        assert any("birds sing morning" in t for t in texts) and any("(no metadata)" in t for t in texts)
        player = rows()[0].find_element(By.TAG_NAME, "audio")
        started = driver.execute_async_script(
            "arguments[0].play().then(() => arguments[1]('playing'), (e) => arguments[1]('failed: ' + e));", player)
        assert started == "playing"
        wait.until(lambda d: d.execute_script("return arguments[0].currentTime", player) > 0.3)
        driver.find_element(By.ID, "filter").send_keys("bark", Keys.ENTER)
        wait.until(lambda d: names() == ["dog.wav"])
        driver.find_element(By.ID, "filter").clear()
        driver.find_element(By.ID, "file").send_keys(str(served["folder"] / "rain.wav"))  # search by example
        wait.until(lambda d: "for “rain.wav”" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: names()[:1] == ["rain.wav"])
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_command_serves_on_localhost_only(served):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "hybrid_jax.serve", "--index", str(served["index"]),
                                "--model", str(served["model_path"]), "--port", str(port)],
                               env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()  # printed once the model is compiled and the app is ready
        assert line.startswith(f"serving 3 items of {served['index']} at http://127.0.0.1:{port}"), line
        deadline = time.time() + 60
        while True:
            try:
                status, body, _ = get(f"http://127.0.0.1:{port}/api/info")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.time() < deadline
                time.sleep(0.2)
        assert status == 200 and json.loads(body)["items"] == 3
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
        if listening.returncode == 0:  # iproute2 present: one listener, on the loopback address
            assert [line.split()[3] for line in listening.stdout.splitlines()] == [f"127.0.0.1:{port}"]
    finally:
        process.terminate()
        process.wait(timeout=30)
