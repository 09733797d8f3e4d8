"""Fixtures the server and browser tests share."""
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    """Headless Chromium through chromedriver (Debian packages chromium, chromium-driver; `make test` installs
    them as root); the test skips where they are missing."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Chromium and chromedriver (Debian packages chromium, chromium-driver): "
                    "run `sudo make browser`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
