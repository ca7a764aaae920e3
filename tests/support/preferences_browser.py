"""Drives the unsubscribe preference page in a real browser (headless Chromium via Selenium and
Debian's chromedriver): opens the signed link, picks "this workflow only", submits, and prints
the confirmation heading. Usage: python3 preferences_browser.py URL"""
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get(sys.argv[1])
    assert driver.title == "Email preferences", driver.title
    driver.find_element(By.ID, "scope-workflow").click()
    driver.find_element(By.ID, "unsubscribe").click()
    done = WebDriverWait(driver, 10).until(ec.presence_of_element_located((By.ID, "done")))
    print(done.text)
    print(driver.find_element(By.TAG_NAME, "p").text)
finally:
    driver.quit()
