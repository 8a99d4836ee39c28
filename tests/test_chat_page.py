"""The web chat page at / in headless Chromium (Debian chromium + chromium-driver, via selenium).

A scripted tiny model replies "Hi, Bob!" to anything; the page must stream it into the assistant
bubble, keep the conversation, and show a server error as an error."""
import shutil

import pytest

from engine_helpers import chain, scripted_model
from jaxllm.infer.engine import Engine, EngineConfig
from jaxllm.infer.server import make_server, serve_in_thread

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (test dependency)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPLY = "Hi, Bob!"


@pytest.fixture(scope="module")
def page():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("headless Chromium missing: apt-get install -y chromium chromium-driver")
    model = scripted_model(chain(["<|im_sep|>", *REPLY, "<|im_end|>"]), name="tiny-scripted")
    engine = Engine(model, EngineConfig(max_batch=2, max_len=256, min_bucket=32))
    server = make_server(model, engine, "127.0.0.1", 0)
    serve_in_thread(server)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
    driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
    yield driver, engine
    driver.quit()
    server.shutdown()
    server.server_close()
    engine.close()


def send(driver, text):
    box = driver.find_element(By.ID, "input")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()
    wait = WebDriverWait(driver, 60)
    n = len(driver.find_elements(By.CSS_SELECTOR, ".assistant"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant")[-1].get_attribute("data-done") == "true"
               if d.find_elements(By.CSS_SELECTOR, ".assistant") else False)
    return driver.find_elements(By.CSS_SELECTOR, ".assistant")[-1], n


def test_chat_page_streams_replies(page):
    driver, engine = page
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "model").text == "tiny-scripted")
    temperature = driver.find_element(By.ID, "temperature")
    temperature.clear()
    temperature.send_keys("0")
    steps = engine.stats["decode_steps"]
    bubble, _ = send(driver, "Hello there")
    assert bubble.text == REPLY and "error" not in bubble.get_attribute("class")
    assert engine.stats["decode_steps"] > steps
    bubble, n = send(driver, "And again?")  # the second turn carries the history
    assert bubble.text == REPLY and n == 2
    assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".user")] == ["Hello there", "And again?"]


def test_chat_page_shows_errors(page):
    driver, _ = page
    max_tokens = driver.find_element(By.ID, "max_tokens")
    max_tokens.clear()
    max_tokens.send_keys("100000")  # more than the context: the server answers 400
    bubble, _ = send(driver, "too long")
    assert "error" in bubble.get_attribute("class") and "context" in bubble.text
