// Open zoo's web page (zoo serve-web) in headless Chromium, let it generate, print what it did.
//
//   node tests/web/browser_client.mjs URL [SCREENSHOT.png]
//
// Run by tests/test_web.py. URL carries the page's query (auto=1, dtype, ids or prompt,
// max_new_tokens, threads); the page writes its result as JSON into #result. Prints that JSON,
// with the page's console errors, and saves a screenshot when asked. CHROMIUM names the browser
// (default /usr/bin/chromium, Debian's package).
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
                                        args: ["--no-sandbox", "--disable-gpu"] });
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
  const errors = [];
  page.on("console", (message) => { if (message.type() === "error") errors.push(message.text()); });
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(url);
  try {
    await page.waitForFunction(() => document.getElementById("result")?.textContent.length > 0, null,
                               { timeout: Number(process.env.PAGE_TIMEOUT_MS ?? 240000) });
  } catch (error) {
    const status = await page.textContent("#status").catch(() => "");
    throw new Error(`the page gave no result (status: ${status}; console: ${errors.join(" | ")}): ${error.message}`);
  }
  const result = JSON.parse(await page.textContent("#result"));
  if (screenshot) await page.screenshot({ path: screenshot });
  console.log(JSON.stringify({ ...result, console_errors: errors }));
} finally {
  await browser.close();
}
