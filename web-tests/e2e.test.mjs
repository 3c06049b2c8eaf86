// End-to-end tests of the web page in headless Chromium (Debian's, driven by
// playwright-core): a real server on a loopback port over a temporary store, a real query
// made with sox and ffmpeg from the open corpus, and the page as a person uses it.
//
// Environment: CRATEDIGGER_BIN (default: $CARGO_TARGET_DIR or target, /release/cratedigger),
// CRATEDIGGER_CORPUS (default ~/.cache/cratedigger-corpus), CHROMIUM (default
// /usr/bin/chromium), CRATEDIGGER_SKIP_CORPUS_TESTS=1 to skip when the corpus or tools are
// missing, CRATEDIGGER_KEEP_TEST_DIRS=1 to keep the temporary folder.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const targetDir = process.env.CARGO_TARGET_DIR || path.join(repo, "target");
const bin = process.env.CRATEDIGGER_BIN || path.join(targetDir, "release", "cratedigger");
const corpus = process.env.CRATEDIGGER_CORPUS || path.join(homedir(), ".cache", "cratedigger-corpus");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const screenshots = path.join(targetDir, "web-tests");
const TOKEN = "e2e-token";

// The query: an excerpt of the reference slowed like a record, under a drum loop.
const SPEED = 0.8;
const EXCERPT_FROM_S = 60;
const EXCERPT_S = 8;
const SAMPLE_AT_S = 6;
const QUERY_S = 24;

const musicDir = path.join(corpus, "marsshooter-data/usr/share/games/marsshooter/audio/music");
const drumLoop = path.join(corpus, "sonic-pi-samples/usr/share/sonic-pi/samples/loop_amen.flac");

/** Why the tests cannot run here, or null. */
function missing() {
  if (!existsSync(bin)) return `no cratedigger binary at ${bin} (cargo build --release -p cratedigger)`;
  if (!existsSync(chromiumPath)) return `no Chromium at ${chromiumPath} (apt-get install chromium)`;
  if (!existsSync(musicDir) || !existsSync(drumLoop)) return `no corpus at ${corpus} (scripts/setup.sh)`;
  for (const tool of ["sox", "ffmpeg"]) {
    try { execFileSync(tool, [tool === "ffmpeg" ? "-version" : "--version"], { stdio: "ignore" }); } catch {
      return `${tool} is not installed`;
    }
  }
  return null;
}

const why = missing();
const skip = why && process.env.CRATEDIGGER_SKIP_CORPUS_TESTS === "1" ? `skipped: ${why}` : false;
if (why && !skip) {
  throw new Error(`${why}\n(set CRATEDIGGER_SKIP_CORPUS_TESTS=1 to skip the tests that need it)`);
}

let dir, server, base, browser, reference, uploadedReference, query;

function run(cmd, args) {
  return execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"] }).toString();
}

/** Builds the query MP3 with sox and ffmpeg; returns its path. */
function makeQuery(ref) {
  const p = (name) => path.join(dir, name);
  run("ffmpeg", ["-nostdin", "-v", "error", "-y", "-i", ref, "-ac", "1", "-ar", "44100", p("ref.wav")]);
  run("sox", ["-R", p("ref.wav"), p("excerpt.wav"), "trim", `${EXCERPT_FROM_S}`, `${EXCERPT_S}`,
    "speed", `${SPEED}`, "rate", "44100", "pad", `${SAMPLE_AT_S}`, "0"]);
  run("sox", ["-R", drumLoop, "-r", "44100", "-c", "1", "-b", "16", p("drum.wav")]);
  run("sox", ["-R", p("drum.wav"), p("drums.wav"), "repeat", "20", "trim", "0", `${QUERY_S}`]);
  run("sox", ["-R", "-m", p("drums.wav"), p("excerpt.wav"), p("mix.wav"), "trim", "0", `${QUERY_S}`, "gain", "-n", "-1"]);
  run("ffmpeg", ["-nostdin", "-v", "error", "-y", "-i", p("mix.wav"), "-b:a", "128k", p("new-song.mp3")]);
  return p("new-song.mp3");
}

/** Starts `cratedigger serve` on a free loopback port; resolves to its base URL. */
function startServer(db) {
  return new Promise((resolve, reject) => {
    server = spawn(bin, ["--db", db, "serve", "--bind", "127.0.0.1:0", "--max-concurrent-identify", "2"], {
      env: { ...process.env, CRATEDIGGER_TOKEN: TOKEN },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    const timer = setTimeout(() => reject(new Error(`the server did not start:\n${out}${err}`)), 30_000);
    server.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    server.stderr.on("data", (d) => { err += d; process.stderr.write(`server: ${d}`); });
    server.on("exit", (code) => { clearTimeout(timer); reject(new Error(`the server exited (${code}):\n${out}${err}`)); });
  });
}

async function newPage() {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  // Nothing may leave this server: no CDN, no fonts, nothing.
  const outside = [];
  page.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("blob:") && !r.url().startsWith("data:")) outside.push(r.url()); });
  return { page, errors, outside };
}

async function shot(page, name) {
  mkdirSync(screenshots, { recursive: true });
  const file = path.join(screenshots, name);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
}

before(async () => {
  if (skip) return;
  dir = mkdtempSync(path.join(tmpdir(), "cratedigger-web-test-"));
  const refs = readdirSync(musicDir).filter((f) => f.endsWith(".ogg")).sort();
  reference = path.join(musicDir, refs[0]);
  uploadedReference = path.join(musicDir, refs[1]);
  query = makeQuery(reference);
  const db = path.join(dir, "db");
  run(bin, ["--db", db, "index", "-q", reference]);
  base = await startServer(db);
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    // No network but loopback here: without the background-networking flags Chromium
    // keeps trying to reach its vendor's hosts.
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
      "--autoplay-policy=no-user-gesture-required"],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.kill("SIGTERM");
  if (dir && process.env.CRATEDIGGER_KEEP_TEST_DIRS !== "1") rmSync(dir, { recursive: true, force: true });
  else if (dir) console.log(`kept ${dir}`);
});

test("dropping a song shows a band for the sample, linked to its source with the speed", { skip }, async () => {
  const { page, errors, outside } = await newPage();
  await page.goto(base);
  const tracks = await (await fetch(`${base}/api/tracks`)).json();
  const expected = tracks.tracks.find((t) => t.path.endsWith(path.basename(reference)));
  assert.ok(expected, `the reference is not in the catalogue: ${JSON.stringify(tracks)}`);

  // Drop the file on the drop zone, as a person would.
  const bytes = execFileSync("base64", ["-w0", query]).toString();
  const dataTransfer = await page.evaluateHandle((b64) => {
    const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([raw], "new-song.mp3", { type: "audio/mpeg" }));
    return dt;
  }, bytes);
  await page.dispatchEvent("#drop", "drop", { dataTransfer });

  const band = page.locator("#query-timeline .band").first();
  await band.waitFor({ timeout: 60_000 });
  assert.equal(await band.getAttribute("data-track-id"), String(expected.id));
  // The band sits where the sample was placed: 6 s of 24 s is 25% of the width.
  const left = parseFloat(await band.evaluate((b) => b.style.left));
  assert.ok(Math.abs(left - (100 * SAMPLE_AT_S) / QUERY_S) < 3, `band starts at ${left}%`);

  const card = page.locator(`.match[data-track-id="${expected.id}"]`);
  const factor = await card.locator(".factor").textContent();
  const m = factor.match(/speed ×([\d.]+)/);
  assert.ok(m, `no speed factor shown: "${factor}"`);
  const shown = parseFloat(m[1]);
  assert.ok(Math.abs(shown / SPEED - 1) < 0.01, `speed shown ${shown}, truth ${SPEED}`);
  const pitch = await card.locator(".pitch").textContent();
  assert.match(pitch, /^−3\.[89]\d st$/, `pitch shown "${pitch}" (0.8x is -3.86 st)`);

  // The source's timeline shows the matched region where the excerpt came from.
  const region = card.locator(".region").first();
  await region.waitFor({ timeout: 30_000 });
  const refLeft = parseFloat(await region.evaluate((r) => r.style.left));
  const refDuration = expected.duration_s;
  assert.ok(Math.abs((refLeft / 100) * refDuration - EXCERPT_FROM_S) < 1.5,
    `region starts at ${refLeft}% of ${refDuration} s, expected ${EXCERPT_FROM_S} s`);
  await shot(page, "identify.png");
  assert.deepEqual(errors, []);
  assert.deepEqual(outside, []);
  await page.close();
});

test("play runs the query's region, then the source's", { skip }, async () => {
  const { page, errors } = await newPage();
  await page.goto(base);
  await page.setInputFiles("#file", query);
  const play = page.locator(".match button").first();
  await play.waitFor({ timeout: 60_000 });
  await play.click();
  // The query's playhead moves first; Stop appears while playing.
  await page.locator("#query-timeline .playhead:not([hidden])").waitFor({ timeout: 30_000 });
  const at = parseFloat(await page.locator("#query-timeline .playhead").evaluate((h) => h.style.left));
  assert.ok(at >= (100 * SAMPLE_AT_S) / QUERY_S - 2, `query playhead at ${at}%`);
  assert.equal(await play.textContent(), "Stop");
  await play.click();
  assert.equal(await page.locator("#error").isHidden(), true, await page.locator("#error").textContent());
  assert.deepEqual(errors, []);
  await page.close();
});

test("a reference uploaded with the token is indexed by a job and found in the catalogue", { skip }, async () => {
  const { page, errors } = await newPage();
  await page.goto(`${base}/#catalogue`);
  await page.locator("#tracks tbody tr").first().waitFor();
  assert.equal(await page.locator("#tracks tbody tr").count(), 1);
  await page.locator("#add summary").click();
  await page.fill("#token", TOKEN);
  await page.setInputFiles("#add-files", uploadedReference);
  await page.click("#add-form button");
  await page.waitForFunction(() => /added \(track \d+\)/.test(document.querySelector("#add-state").textContent),
    null, { timeout: 120_000 });
  await page.waitForFunction(() => document.querySelectorAll("#tracks tbody tr").length === 2);

  // Search by the name it was uploaded under, open it: a picture and a player.
  const name = path.basename(uploadedReference, ".ogg").split("_").pop();
  await page.fill("#q", name);
  await page.click("#search button");
  await page.waitForFunction(() => document.querySelectorAll("#tracks tbody tr").length === 1);
  await page.locator("#tracks tbody tr").first().click();
  await page.locator("#track-detail:not([hidden])").waitFor();
  await page.waitForFunction(() => document.querySelector("#track-timeline canvas").dataset.drawn === "1",
    null, { timeout: 30_000 });
  const src = await page.locator("#track-audio").getAttribute("src");
  assert.match(src, /^\/api\/tracks\/\d+\/audio$/);
  const audio = await fetch(`${base}${src}`, { headers: { Range: "bytes=0-3" } });
  assert.equal(audio.status, 206);
  assert.equal(Buffer.from(await audio.arrayBuffer()).toString("latin1"), "OggS");
  await shot(page, "catalogue.png");
  assert.deepEqual(errors, []);
  await page.close();
});

test("without the token the page says why an upload is refused", { skip }, async () => {
  const { page } = await newPage();
  await page.goto(`${base}/#catalogue`);
  await page.locator("#add summary").click();
  await page.fill("#token", "not-the-token");
  await page.setInputFiles("#add-files", query);
  await page.click("#add-form button");
  await page.locator("#error:not([hidden])").waitFor();
  assert.match(await page.locator("#error").textContent(), /wrong token/);
  await page.close();
});

test("a scan relates a new song to its source, shown in the graph and on the track", { skip }, async () => {
  const { page, errors } = await newPage();
  await page.goto(`${base}/#catalogue`);
  await page.locator("#add summary").click();
  await page.fill("#token", TOKEN);
  await page.setInputFiles("#add-files", query);
  await page.click("#add-form button");
  await page.waitForFunction(() => /added \(track \d+\)/.test(document.querySelector("#add-state").textContent),
    null, { timeout: 120_000 });
  const songId = Number((await page.locator("#add-state").textContent()).match(/track (\d+)/)[1]);
  await page.click("#scan");
  await page.waitForFunction(() => /sample relation/.test(document.querySelector("#scan-state").textContent),
    null, { timeout: 300_000 });

  const tracks = await (await fetch(`${base}/api/tracks`)).json();
  const source = tracks.tracks.find((t) => t.path.endsWith(path.basename(reference))).id;
  await page.goto(`${base}/#graph`);
  const edge = page.locator("#graph-picture line.edge");
  await edge.first().waitFor({ state: "attached" });
  const ends = await edge.evaluateAll((ls) => ls.map((l) => [Number(l.dataset.from), Number(l.dataset.to)].sort()));
  assert.deepEqual(ends, [[songId, source].sort()], `edges ${JSON.stringify(ends)}`);
  await shot(page, "graph.png");

  // The song's page names the source and where the material sits.
  await page.locator(`#graph-picture .node[data-track-id="${songId}"]`).click();
  const relation = page.locator(`#track-relations li.relation[data-other="${source}"]`);
  await relation.waitFor();
  assert.match(await relation.textContent(), /0\.8\dx|1\.2\dx/);
  assert.deepEqual(errors, []);
  await page.close();
});
