// attreid search page: builds its controls from /api/schema and POSTs /search.
// Plain browser JavaScript, no dependencies and no build step.
"use strict";

(function () {
  // Display order and labels of the attribute tasks (tasks the schema adds later are
  // appended with their own name).
  const TASK_LABELS = {
    gender: "Gender",
    age: "Age",
    backpack: "Backpack",
    bag: "Bag",
    handbag: "Handbag",
    hat: "Hat",
    up: "Sleeves",
    down: "Lower length",
    clothes: "Lower clothes",
    hair: "Hair",
    upcolor: "Upper colour",
    downcolor: "Lower colour",
  };
  const COLOUR_TASKS = new Set(["upcolor", "downcolor"]);
  const COLOURS = {
    black: "#1f1f1f", white: "#ffffff", red: "#d93a3a", purple: "#8e4bb8",
    yellow: "#f2c41b", gray: "#9a9a9a", grey: "#9a9a9a", blue: "#2f6fdb",
    green: "#2e9e55", pink: "#f29ac0", brown: "#8a5a2e", orange: "#f08a24",
  };
  const K_CHOICES = [5, 10, 20, 50, 100, 200];
  const DEFAULT_K = 10;
  // Market-1501 style file names: identity_cCAMERAsSEQ_FRAME_NN.jpg
  const MARKET_NAME = /^(-?\d+)_c(\d+)/;

  const $ = (sel) => document.querySelector(sel);
  const el = {
    info: $("#index-info"),
    dropZone: $("#drop-zone"),
    fileInput: $("#file-input"),
    preview: $("#query-preview"),
    previewMissing: $("#preview-missing"),
    previewEmpty: $("#preview-empty"),
    queryTitle: $("#query-title"),
    queryDetail: $("#query-detail"),
    clearQuery: $("#clear-query"),
    groups: $("#attribute-groups"),
    clearAttributes: $("#clear-attributes"),
    cameras: $("#camera-chips"),
    k: $("#k-select"),
    minProb: $("#min-prob"),
    rerank: $("#rerank"),
    search: $("#search-button"),
    reset: $("#reset-button"),
    status: $("#status"),
    error: $("#error"),
    results: $("#results"),
    empty: $("#empty-state"),
    legend: $("#legend"),
    attrLegend: $("#attr-legend"),
    verifyFirst: $("#verify-first"),
    verifySecond: $("#verify-second"),
    verifyButton: $("#verify-button"),
    verifyResult: $("#verify-result"),
    constraints: $("#constraints"),
    frameFrom: $("#frame-from"),
    frameTo: $("#frame-to"),
    order: $("#order"),
    group: $("#group"),
    refine: $("#refine"),
    download: $("#download"),
    more: $("#more"),
    describe: $("#describe"),
    reading: $("#describe-reading"),
  };
  // the investigator's workspace (workspace.js): cases, timeline, frames, compare
  const ws = () => window.attreidWorkspace || null;

  const state = {
    schema: null,
    query: null, // {kind: "file", file, name, identity} | {kind: "id", id, name, identity, camera}
    previewUrl: null,
    attributes: new Map(), // task -> value
    cameras: new Set(),
    controller: null,
    seq: 0,
    hits: [], // the results shown (for the CSV and "More results")
    offset: 0,
    marks: new Map(), // id -> "right" | "wrong"
    mode: null,
  };

  // ---- helpers ---------------------------------------------------------------------------

  function make(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, String(value));
      else if (key in node) node[key] = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function swatch(colour) {
    const span = make("span", { class: "swatch", "aria-hidden": "true" });
    if (colour === "multicolour" || colour === "multicolor") span.classList.add("multi");
    else span.style.background = COLOURS[colour] || "#ccc";
    if (colour === "white") span.classList.add("light");
    return span;
  }

  function identityOfName(name) {
    const m = MARKET_NAME.exec(name || "");
    return m ? Number(m[1]) : null;
  }

  function errorText(detail, status) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => {
        const loc = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body" && p !== "query") : [];
        return (loc.length ? loc.join(".") + ": " : "") + (d.msg || JSON.stringify(d));
      }).join("; ");
    }
    if (detail) return JSON.stringify(detail);
    return `request failed (HTTP ${status})`;
  }

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = !message;
  }

  function setStatus(text, stateName) {
    el.status.textContent = text;
    el.status.dataset.state = stateName;
  }

  // ---- schema and controls ---------------------------------------------------------------

  function orderedTasks(tasks) {
    const known = Object.keys(TASK_LABELS);
    const rank = (t) => (known.includes(t.name) ? known.indexOf(t.name) : known.length);
    return [...tasks].sort((a, b) => rank(a) - rank(b));
  }

  function attributeChip(task, value) {
    const chip = make("button", {
      type: "button", class: "chip", "data-task": task.name, "data-value": value,
      "aria-pressed": "false", title: `${task.name}=${value}`,
    });
    if (COLOUR_TASKS.has(task.name)) {
      chip.classList.add("colour");
      chip.append(swatch(value));
    }
    chip.append(value === "multicolour" ? "multi" : value);
    chip.addEventListener("click", () => toggleAttribute(task.name, value));
    return chip;
  }

  // Two-valued tasks go in a compact grid (label above its two chips); the others get a row
  // each (label at the left). The schema lists only the tasks the model was trained on; with
  // none (a re-ID-only model) the block says that search by description is unavailable, and
  // the tasks trained without labels are named under the chips.
  function buildAttributeChips(tasks, untrained) {
    el.groups.replaceChildren();
    const missing = (untrained || []).map((t) => TASK_LABELS[t] || t);
    if (!tasks.length) {
      el.groups.append(make("p", { class: "hint unavailable", id: "attributes-unavailable",
        text: "Search by description is unavailable for this model: it was trained without " +
          "attribute labels (re-ID only). Search with a crop." }));
      return;
    }
    const grid = make("div", { class: "binary-grid" });
    const rows = make("div", { class: "rows" });
    for (const task of orderedTasks(tasks)) {
      const label = TASK_LABELS[task.name] || task.name;
      const chips = make("div", { class: "chips", role: "group", "aria-label": label },
        ...task.values.map((value) => attributeChip(task, value)));
      const binary = task.values.length === 2;
      (binary ? grid : rows).append(make("div",
        { class: binary ? "group stacked" : "group", "data-group": task.name },
        make("span", { class: "group-label", text: label }), chips));
    }
    el.groups.append(grid, rows);
    if (missing.length) {
      el.groups.append(make("p", { class: "hint unavailable", id: "attributes-untrained",
        text: `Not available (trained without labels): ${missing.join(", ")}.` }));
    }
  }

  function attributeSearch() {
    return Boolean(state.schema && state.schema.tasks.length);
  }

  function idleText() {
    return attributeSearch() ? "Choose a crop or an attribute to search." : "Choose a crop to search.";
  }

  function buildCameraChips(cameras) {
    el.cameras.replaceChildren();
    const all = make("button", { type: "button", class: "chip", "data-camera": "all",
      "aria-pressed": "true", text: "all" });
    all.addEventListener("click", () => {
      state.cameras.clear();
      syncChips();
      autoSearch();
    });
    el.cameras.append(all);
    for (const cam of cameras) {
      const chip = make("button", { type: "button", class: "chip", "data-camera": cam,
        "aria-pressed": "false", text: String(cam), title: `camera ${cam}` });
      chip.addEventListener("click", () => {
        if (state.cameras.has(cam)) state.cameras.delete(cam);
        else state.cameras.add(cam);
        syncChips();
        autoSearch();
      });
      el.cameras.append(chip);
    }
  }

  function buildKSelect(maxK) {
    const choices = K_CHOICES.filter((k) => k <= maxK);
    if (!choices.includes(maxK) && maxK < K_CHOICES[K_CHOICES.length - 1]) choices.push(maxK);
    el.k.replaceChildren(...choices.map((k) => make("option", { value: String(k), text: String(k) })));
    el.k.value = String(choices.includes(DEFAULT_K) ? DEFAULT_K : choices[choices.length - 1]);
  }

  function syncChips() {
    for (const chip of el.groups.querySelectorAll(".chip[data-task]")) {
      const on = state.attributes.get(chip.dataset.task) === chip.dataset.value;
      chip.classList.toggle("selected", on);
      chip.setAttribute("aria-pressed", String(on));
    }
    for (const group of el.groups.querySelectorAll(".group")) {
      group.classList.toggle("active", state.attributes.has(group.dataset.group));
    }
    for (const chip of el.cameras.querySelectorAll(".chip[data-camera]")) {
      const cam = chip.dataset.camera;
      const on = cam === "all" ? state.cameras.size === 0 : state.cameras.has(Number(cam));
      chip.classList.toggle("selected", on);
      chip.setAttribute("aria-pressed", String(on));
    }
    el.clearAttributes.hidden = state.attributes.size === 0;
  }

  function toggleAttribute(task, value) {
    if (state.attributes.get(task) === value) state.attributes.delete(task);
    else state.attributes.set(task, value);
    syncChips();
    autoSearch();
  }

  // ---- the query crop --------------------------------------------------------------------

  function showPreview(url) {
    el.previewMissing.hidden = true;
    el.previewEmpty.hidden = Boolean(url);
    el.preview.hidden = !url;
    if (url) el.preview.src = url;
    else el.preview.removeAttribute("src");
  }

  function renderQuery() {
    const q = state.query;
    el.dropZone.dataset.state = q ? q.kind : "empty";
    el.clearQuery.hidden = !q;
    if (!q) {
      showPreview(null);
      el.queryTitle.textContent = "Drop a crop here";
      el.queryDetail.textContent = "or click to choose a file \u00b7 paste works too";
      return;
    }
    if (q.kind === "file" || q.kind === "upload") {
      showPreview(q.kind === "file" || state.previewUrl ? state.previewUrl :
        `/uploads/${q.token.split(",")[0]}`);
      el.queryTitle.textContent = "Uploaded crop";
      el.queryDetail.textContent = q.name + (q.identity !== null && q.identity !== undefined ?
        ` \u00b7 id ${q.identity}` : "");
    } else {
      showPreview(`/images/${q.id}`);
      el.queryTitle.textContent = `Indexed crop #${q.id}`;
      const bits = [q.name];
      if (q.identity !== null && q.identity !== undefined) bits.push(`id ${q.identity}`);
      if (q.camera !== null && q.camera !== undefined) bits.push(`cam ${q.camera}`);
      el.queryDetail.textContent = bits.join(" \u00b7 ");
    }
  }

  function setFile(file, more) {
    if (!file) return;
    const files = [file, ...(more || [])];
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    const name = files.length > 1 ? `${files.length} crops (pooled)` : file.name || "pasted image";
    state.query = { kind: "file", files, name, identity: identityOfName(file.name) };
    state.marks.clear();
    renderQuery();
    runSearch();
  }

  function setIndexedQuery(hit) {
    state.marks.clear();
    el.refine.hidden = true;
    state.query = { kind: "id", id: hit.id, name: hit.name, identity: hit.identity,
      camera: hit.camera };
    renderQuery();
    runSearch();
  }

  function clearQuery() {
    state.query = null;
    el.fileInput.value = "";
    renderQuery();
  }

  // ---- searching -------------------------------------------------------------------------

  function hasQuery() {
    return Boolean(state.query) || state.attributes.size > 0 || el.describe.value.trim() !== "";
  }

  function autoSearch() {
    if (hasQuery()) runSearch();
    else {
      writeUrl();
      if (state.controller) state.controller.abort();
      showResults([], null);
      showError("");
      setStatus(idleText(), "idle");
    }
  }

  // ---- the query in the URL (Back, reload and links keep the search) ----------------------

  function urlOf() {
    const p = new URLSearchParams();
    const q = state.query;
    if (q && q.kind === "id") p.set("q", String(q.id));
    if (q && q.kind === "upload") p.set("upload", q.token);  // comma-separated when pooled
    if (state.attributes.size) {
      p.set("a", [...state.attributes].map(([t, v]) => `${t}=${v}`).join(","));
    }
    if (el.describe.value.trim()) p.set("d", el.describe.value.trim());
    if (state.cameras.size) p.set("cam", [...state.cameras].sort((a, b) => a - b).join(","));
    if (el.k.value && el.k.value !== String(DEFAULT_K)) p.set("k", el.k.value);
    if (el.rerank.checked) p.set("rerank", "1");
    if (el.minProb.value !== "") p.set("min", el.minProb.value);
    if (el.constraints.value !== "soft") p.set("cons", el.constraints.value);
    if (frameRange()) p.set("fr", frameRange());
    if (el.order.value !== "rank") p.set("order", el.order.value);
    if (el.group.checked) p.set("group", "1");
    const text = p.toString();
    return text ? `?${text}` : location.pathname;
  }

  // A new entry in the history for every new search (Back returns to the one before).
  function writeUrl() {
    const url = urlOf();
    const now = location.search || location.pathname;
    if (url !== now && url !== location.pathname + location.search) {
      history.pushState(null, "", url);
    }
  }

  // Set the controls from the URL (page load, Back / Forward) and search again.
  function readUrl() {
    const p = new URLSearchParams(location.search);
    state.attributes.clear();
    for (const pair of (p.get("a") || "").split(",").filter(Boolean)) {
      const [task, value] = pair.split("=");
      if (task && value) state.attributes.set(task, value);
    }
    el.describe.value = p.get("d") || "";
    state.cameras.clear();
    for (const cam of (p.get("cam") || "").split(",").filter(Boolean)) {
      if (!Number.isNaN(Number(cam))) state.cameras.add(Number(cam));
    }
    if (p.get("k") && [...el.k.options].some((o) => o.value === p.get("k"))) el.k.value = p.get("k");
    else if (state.schema) buildKSelect(state.schema.max_k);
    el.rerank.checked = p.get("rerank") === "1";
    el.minProb.value = p.get("min") || "";
    el.constraints.value = p.get("cons") === "hard" ? "hard" : "soft";
    const [from, to] = (p.get("fr") || "-").split("-");
    el.frameFrom.value = from || "";
    el.frameTo.value = to || "";
    el.order.value = p.get("order") === "time" ? "time" : "rank";
    el.group.checked = p.get("group") === "1";
    if (p.get("q") !== null && !Number.isNaN(Number(p.get("q")))) {
      const id = Number(p.get("q"));
      state.query = { kind: "id", id, name: `#${id}`, identity: null, camera: null };
    } else if (p.get("upload")) {
      if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
      state.previewUrl = null;
      state.query = { kind: "upload", token: p.get("upload"), name: "uploaded crop",
        identity: null };
    } else {
      state.query = null;
    }
    syncChips();
    renderQuery();
    if (hasQuery()) runSearch();
    else autoSearch();
  }

  function frameRange() {
    const from = el.frameFrom.value, to = el.frameTo.value;
    if (from === "" && to === "") return "";
    return `${from === "" ? 0 : from}-${to === "" ? 999999999 : to}`;
  }

  // ---- results a person works with: more, marks, CSV -----------------------------------

  function csvCell(value) {
    const text = value === null || value === undefined ? "" : String(value);
    return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  function downloadCsv() {
    // what a reader of the file needs besides the hits: the query, the marks, the members of
    // grouped tracks and the operating point (a case export keeps full paths and frames)
    const q = state.query;
    const query = q ? (q.kind === "id" ? `indexed crop #${q.id}` : `uploaded ${q.name}`) :
      [el.describe.value.trim(), [...state.attributes].map(([t, v]) => `${t}=${v}`).join(",")]
        .filter(Boolean).join(" + ");
    const head = ["rank", "id", "name", "identity", "camera", "frame", "time", "score",
      "distance", "p_same", "same", "person", "match", "attributes", "mark", "track_members",
      "query", "operating_point"];
    const rule = state.rule || "";
    const rows = state.hits.map((h, i) => [i + 1, h.id, h.name, h.identity, h.camera, h.frame,
      h.time, h.score, h.distance, h.probability, h.same, h.person, h.match,
      Object.entries(h.attributes || {}).map(([t, a]) => `${t}=${shown(a)}`).join(" "),
      state.marks.get(h.id) || "", h.group ? h.group.members.map((m) => m.id).join(" ") : "",
      query, rule]);
    const text = [head, ...rows].map((r) => r.map(csvCell).join(",")).join("\n") + "\n";
    const link = make("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })),
      download: "attreid_results.csv" });
    document.body.append(link);
    link.click();
    link.remove();
  }

  function setMark(id, kind) {
    if (state.marks.get(id) === kind) state.marks.delete(id);
    else state.marks.set(id, kind);
    for (const li of el.results.querySelectorAll(`li[data-id="${id}"]`)) {
      li.dataset.mark = state.marks.get(id) || "";
    }
    const hit = state.hits.find((h) => h.id === id);
    if (ws() && hit) ws().marked(hit, state.marks.get(id) || "clear", state.query);
    const n = state.marks.size;
    el.refine.hidden = n === 0 || !state.query || state.query.kind === "file";
    el.refine.textContent = `Refine with ${n} mark${n === 1 ? "" : "s"}`;
  }

  // The Search button with no crop and no attribute: say what to do, not that it failed.
  function nothingToSearch() {
    showError("");
    setStatus(attributeSearch() ?
      "Nothing to search for yet: drop or choose a crop on the left, or click an attribute " +
        "(say Female, Backpack yes), then Search." :
      "Nothing to search for yet: drop or choose a crop on the left, then Search.", "hint");
  }

  function formData() {
    const form = new FormData();
    const q = state.query;
    if (q && q.kind === "file") for (const f of q.files) form.append("image", f, f.name || "crop");
    if (q && q.kind === "upload") form.append("upload", q.token);
    if (q && q.kind === "id") form.append("query_id", String(q.id));
    const attrs = [...state.attributes].map(([t, v]) => `${t}=${v}`).join(",");
    if (attrs) form.append("attributes", attrs);
    if (el.describe.value.trim()) form.append("description", el.describe.value.trim());
    form.append("k", el.k.value || String(DEFAULT_K));
    if (state.cameras.size) form.append("camera", [...state.cameras].sort((a, b) => a - b).join(","));
    if (el.minProb.value !== "") form.append("min_prob", el.minProb.value);
    form.append("rerank", el.rerank.checked ? "true" : "false");
    form.append("constraints", el.constraints.value);
    const frames = frameRange();
    if (frames) form.append("frames", frames);
    form.append("order", el.order.value);
    form.append("group", el.group.checked ? "true" : "false");
    form.append("offset", String(state.offset));
    const marked = (kind) => [...state.marks].filter(([, m]) => m === kind).map(([id]) => id);
    if (q && q.kind !== "file") {
      if (marked("right").length) form.append("right", marked("right").join(","));
      if (marked("wrong").length) form.append("wrong", marked("wrong").join(","));
    }
    return form;
  }

  async function runSearch(append) {
    if (!append) state.offset = 0;
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    const started = performance.now();
    document.body.classList.add("busy");
    el.results.setAttribute("aria-busy", "true");
    setStatus("Searching\u2026", "loading");
    let body = null;
    let response = null;
    try {
      response = await fetch("/search", { method: "POST", body: formData(),
        signal: controller.signal });
      body = await response.json().catch(() => null);
    } catch (exc) {
      if (controller.signal.aborted) return; // a newer search replaced this one
      finish(controller);
      fail(`Search failed: ${exc.message || exc}`);
      return;
    }
    if (controller.signal.aborted) return;
    finish(controller);
    if (!response.ok) {
      fail(errorText(body && body.detail, response.status));
      return;
    }
    const ms = Math.round(performance.now() - started);
    if (body.upload && state.query && state.query.kind === "file") {
      // the server keeps the crop: later searches (and the URL) name it by its token
      state.query = { kind: "upload", token: body.upload, name: state.query.name,
        identity: state.query.identity };
    }
    const known = body.query || {};
    if (state.query && state.query.kind === "id" && known.name) {
      Object.assign(state.query, { name: known.name, identity: known.identity,
        camera: known.camera });
      renderQuery();
    }
    writeUrl();
    showError("");
    state.rule = body.calibration && body.calibration.rule ? body.calibration.rule : "";
    state.personThreshold = body.calibration && body.calibration.person_threshold !== undefined ?
      body.calibration.person_threshold : null;
    showReading(body.description);
    if (ws() && !append) ws().searched(body, state.query, el.describe.value.trim(),
      [...state.attributes].map(([t, v]) => `${t}=${v}`).join(","));
    state.hits = append ? state.hits.concat(body.results) : body.results;
    state.mode = body.mode;
    showResults(state.hits, body.mode);
    const attrLegend = attributeLegend(state.hits, body.attribute_confidence);
    el.attrLegend.textContent = attrLegend;
    el.attrLegend.hidden = !attrLegend;
    el.more.hidden = body.results.length < Number(el.k.value || DEFAULT_K) ||
      (body.total !== undefined && state.hits.length >= body.total);
    el.download.hidden = state.hits.length === 0;
    const n = state.hits.length;
    const modes = { image: "by image", "indexed image": "by indexed crop",
      attributes: "by attributes" };
    const mode = (modes[body.mode] || body.mode) + (body.mode === "attributes" ?
      (el.minProb.value === "" || Number(el.minProb.value) === 0 ?
        ", ranked by the product of their probabilities" :
        `, ranked by the product of their probabilities, crops below ${el.minProb.value} hidden`)
      : "");
    // a description ranks every crop (none hidden unless min. prob. says so): the total is
    // the crops it ranked, not crops that match
    const total = body.total !== undefined ? ` shown, ranked among ${body.total.toLocaleString()} crops;` : "";
    const hidden = body.hidden ? ` \u00b7 ${body.hidden.toLocaleString()} crop` +
      `${body.hidden === 1 ? "" : "s"} hidden by the attribute filter` : "";
    const refined = state.marks.size && state.query && state.query.kind !== "file" ?
      ` \u00b7 refined with ${state.marks.size} mark${state.marks.size === 1 ? "" : "s"}` : "";
    const soft = state.attributes.size && body.mode !== "attributes" &&
      el.constraints.value === "soft" ? " \u00b7 attributes re-weight (nothing hidden)" : "";
    setStatus(`${n}${total ? total : ` result${n === 1 ? "" : "s"}`} in ${ms} ms \u00b7 ${mode}` + hidden +
      refined + soft +
      calibrationText(body) +
      (n === 0 ? " \u2014 try fewer attributes, more cameras or a lower min. prob." : ""), "done");
  }

  // What the probabilities on the cards mean, or why there are none.
  function calibrationText(body) {
    const c = body.calibration;
    if (!c || body.mode === "attributes") return "";
    if (el.rerank.checked) return " \u00b7 re-ranked distances (no P(same))";
    if (!c.calibrated) return " \u00b7 P(same): uncalibrated";
    const person = body.query ? body.query.person : null;
    const cut = c.person_threshold;
    if (person !== null && person !== undefined && cut !== null && person < cut) {
      return ` \u00b7 the query does not look like a person (P(person) ${percent(person)}):` +
        " no result is marked the same person";
    }
    const warnings = [c.unsupported].concat(c.drift || []).filter(Boolean);
    return ` \u00b7 ${c.rule}` + (warnings.length ? ` \u00b7 warning: ${warnings.join("; ")}` : "");
  }

  async function runVerify() {
    const first = el.verifyFirst.files[0];
    const second = el.verifySecond.files[0];
    if (!first || !second) {
      el.verifyResult.textContent = "Choose two crops to compare.";
      el.verifyResult.dataset.state = "error";
      return;
    }
    const form = new FormData();
    form.append("first", first);
    form.append("second", second);
    el.verifyResult.textContent = "Comparing\u2026";
    el.verifyResult.dataset.state = "loading";
    try {
      const response = await fetch("/verify", { method: "POST", body: form });
      const body = await response.json().catch(() => null);
      if (!response.ok) throw new Error(errorText(body && body.detail, response.status));
      const parts = [`distance ${body.distance.toFixed(3)}`];
      if (body.calibrated) {
        parts.push(`${body.rule} (P(same) of a pair as likely the same person as not)`);
        if (body.person) parts.push(`P(person) ${percent(body.person[0])}, ${percent(body.person[1])}`);
        (body.drift || []).forEach((line) => parts.push(`warning: ${line}`));
      } else {
        parts.push(body.note || "uncalibrated");
      }
      el.verifyResult.textContent = parts.join(" \u00b7 ");
      // the two crops compared, each with its P(person)
      const crops = document.querySelector("#compare-crops");
      if (crops) {
        crops.replaceChildren(...[first, second].map((file, i) => make("span", { class: "facts" },
          make("img", { src: URL.createObjectURL(file), alt: file.name }), make("br"),
          file.name, make("br"), body.person ? `P(person) ${percent(body.person[i])}` : "")));
      }
      el.verifyResult.dataset.state = body.calibrated ? (body.same ? "same" : "different") :
        "uncalibrated";
    } catch (exc) {
      el.verifyResult.textContent = `Compare failed: ${exc.message || exc}`;
      el.verifyResult.dataset.state = "error";
    }
  }

  function finish(controller) {
    if (state.controller === controller) state.controller = null;
    document.body.classList.remove("busy");
    el.results.removeAttribute("aria-busy");
  }

  function fail(message) {
    showReading(null);
    showError(message);
    showResults([], "error");
    setStatus("Search failed.", "error");
  }

  // ---- results ---------------------------------------------------------------------------

  // An attribute value as a person reads it: "female?" when the calibration says the value
  // is uncertain (sure === false), the value alone when sure or when nothing is known.
  function shown(a, text) {
    return (text === undefined ? a.value : text) + (a.sure === false ? "?" : "");
  }

  // Only the tasks in attrs are known (the model was trained on them): "no bag" only when
  // every bag task is known and says no ("no bag?" when one of them is uncertain).
  function bagInfo(attrs) {
    const items = [];
    const bags = ["backpack", "bag", "handbag"];
    for (const task of bags) {
      if (attrs[task] && attrs[task].value === "yes") items.push(shown(attrs[task], task));
    }
    if (attrs.hat && attrs.hat.value === "yes") items.push(shown(attrs.hat, "hat"));
    if (items.length) return items.join(", ");
    if (!bags.every((task) => attrs[task])) return "";
    return bags.some((task) => attrs[task].sure === false) ? "no bag?" : "no bag";
  }

  // What "?" means, and the heads that are never sure (body.attribute_confidence).
  function attributeLegend(hits, summary) {
    if (!summary) return "";
    const uncertain = hits.some((h) => Object.values(h.attributes || {})
      .some((a) => a.sure === false));
    if (!uncertain) return "";
    return `value? = uncertain: less probable than the values that were right ` +
      `${percent(summary.precision)} of the time on the calibration's crops` +
      (summary.unreliable.length ? ` \u00b7 never sure (no better than their majority ` +
        `class): ${summary.unreliable.join(", ")}` : "");
  }

  // How the server read the description (or nothing without one).
  function showReading(description) {
    el.reading.hidden = !description;
    if (!description) return;
    el.reading.textContent = "read as: " + description.reading
      .map((r) => `${r.words} \u2192 ${r.as}`).join("; ");
  }

  function percent(p) {
    return `${Math.round(p * 100)}%`;
  }

  function attrTitle(attrs) {
    return Object.entries(attrs)
      .map(([task, a]) => `${task}: ${shown(a)} (${percent(a.probability)}` +
        (a.reliable === false ? ", head no better than its majority class" :
          a.sure === false ? ", uncertain" : "") + ")").join("\n");
  }

  function colourItem(attrs, task, label) {
    const a = attrs[task];
    if (!a) return null;
    return make("span", { class: "colour-item" + (a.sure === false ? " uncertain" : ""),
      title: `${label}: ${shown(a)} (${percent(a.probability)})` },
    swatch(a.value), shown(a, a.value === "multicolour" ? "multi" : a.value));
  }

  function resultCard(hit, rank) {
    const attrs = hit.attributes || {};
    const queryIdentity = state.query ? state.query.identity : null;
    const same = queryIdentity !== null && queryIdentity !== undefined && hit.identity === queryIdentity;
    const score = [];
    if (hit.distance !== null && hit.distance !== undefined) {
      const kind = hit.score === "re-ranked distance" ? "re-ranked d" : "d";
      score.push(`${kind} ${hit.distance.toFixed(3)}`);
    }
    if (hit.match !== null && hit.match !== undefined) score.push(`match ${percent(hit.match)}`);
    const calibrated = hit.probability !== null && hit.probability !== undefined;
    const sameText = !calibrated ? "" : hit.note ? "not a person" :
      `P(same) ${percent(hit.probability)}`;

    const who = [attrs.gender && shown(attrs.gender), attrs.age && shown(attrs.age)]
      .filter(Boolean).join(", ");
    const card = make("button", {
      type: "button", class: "result" + (same ? " same" : "") + (hit.same ? " passes" : ""),
      "data-id": hit.id, "data-rank": rank,
      "data-probability": calibrated ? hit.probability : "",
      "data-passes": hit.same === true ? "true" : hit.same === false ? "false" : "",
      "data-identity": hit.identity === null ? "" : hit.identity,
      "data-camera": hit.camera === null ? "" : hit.camera,
      title: `${hit.name}\n${attrTitle(attrs)}\n\nclick to search with this crop`,
    },
    make("span", { class: "thumb" },
      make("img", { src: hit.url, alt: `result ${rank}: ${hit.name}`,
        width: 96, height: 192 }),
      make("span", { class: "rank", text: String(rank) }),
      hit.camera !== null ? make("span", { class: "cam", text: `c${hit.camera}` }) : null,
      hit.same ? make("span", { class: "pass-badge", text: "\u2713 same",
        title: "passes the operating point: the same person" }) : null),
    make("span", { class: "meta" },
      make("span", { class: "score", text: score.join(" \u00b7 ") || "\u00a0" }),
      junkNote(hit),
      calibrated ? make("span", { class: "prob" + (hit.same ? " pass" : ""), text: sameText,
        title: hit.note ? hit.note : "calibrated probability that this is the query's " +
          "person in this gallery; \u2713: at least the operating point's P(same)" }) : null,
      make("span", { class: "who", text: who || "\u00a0" }),
      make("span", { class: "colours" }, colourItem(attrs, "upcolor", "upper"),
        colourItem(attrs, "downcolor", "lower")),
      make("span", { class: "bags", text: bagInfo(attrs) || "\u00a0" }),
      make("span", { class: "ident",
        text: (hit.identity !== null ? `id ${hit.identity} \u00b7 ` : "") + `#${hit.id}` +
          (hit.time ? ` \u00b7 ${hit.time.slice(11, 21)}` :
            hit.frame !== null && hit.frame !== undefined ? ` \u00b7 frame ${hit.frame}` : ""),
        title: hit.time ? `${hit.time} (UTC), frame ${hit.frame}` : "" }),
      null));
    for (const [task, a] of Object.entries(attrs)) card.setAttribute(`data-attr-${task}`, a.value);
    card.addEventListener("click", () => {
      setIndexedQuery(hit);
      window.scrollTo({ top: 0, behavior: "smooth" });
    });
    return card;
  }

  // "Show all" of a grouped row: the other crops of its track, each searchable.
  function trackMembers(hit) {
    if (!hit.group || hit.group.size < 2) return null;
    const members = hit.group.members.map((m) => {
      const thumb = make("button", { type: "button", class: "member", "data-id": m.id,
        title: `#${m.id} \u00b7 c${m.camera} \u00b7 frame ${m.frame}; click to search with it` },
      make("img", { src: m.url, alt: `track member #${m.id}`, width: 40, height: 80 }));
      thumb.addEventListener("click", () => setIndexedQuery(m));
      return thumb;
    });
    return make("details", { class: "track" },
      make("summary", { text: `+${hit.group.size - 1} in this track` }),
      make("span", { class: "members" }, ...members));
  }

  // A crop the person check fails: say so on its card (why a close one has no mark).
  function junkNote(hit) {
    const cut = state.personThreshold;
    if (hit.person === null || hit.person === undefined || cut === null || hit.person >= cut) {
      return null;
    }
    return make("span", { class: "junk", text: `not a person? P(person) ${percent(hit.person)}`,
      title: `the person check passes ${percent(cut)} and above: a crop below it is never ` +
        "marked the same person (background, partial or hidden by something)" });
  }

  function markButtons(hit) {
    const right = make("button", { type: "button", class: "mark mark-right", text: "\u2713",
      title: "right: this is the person (Refine uses it)", "aria-label": `mark #${hit.id} right` });
    const wrong = make("button", { type: "button", class: "mark mark-wrong", text: "\u2717",
      title: "wrong: not the person (Refine leaves it out)", "aria-label": `mark #${hit.id} wrong` });
    right.addEventListener("click", () => setMark(hit.id, "right"));
    wrong.addEventListener("click", () => setMark(hit.id, "wrong"));
    return make("span", { class: "marks" }, right, wrong);
  }

  function showResults(hits, mode) {
    const image = mode === "image" || mode === "indexed image";
    el.results.replaceChildren(...hits.map((hit, i) => make("li", {
      "data-id": hit.id, "data-mark": state.marks.get(hit.id) || "" },
    resultCard(hit, i + 1), image || ws() ? markButtons(hit) : null,
    ws() ? ws().cardTools(hit) : null, trackMembers(hit))));
    el.results.dataset.mode = mode && mode !== "error" ? mode : "";
    el.results.dataset.count = String(hits.length);
    state.seq += 1;
    el.results.dataset.seq = String(state.seq);
    el.empty.hidden = hits.length > 0 || mode !== null;
    el.legend.hidden = !el.results.querySelector(".result.same");
    if (!hits.length) el.attrLegend.hidden = true;
  }

  // ---- wiring ----------------------------------------------------------------------------

  function wire() {
    el.fileInput.addEventListener("change", () => {
      const files = [...el.fileInput.files];
      setFile(files[0], files.slice(1));
    });
    el.preview.addEventListener("error", () => {
      if (!el.preview.getAttribute("src")) return;
      el.preview.hidden = true;
      el.previewMissing.hidden = false;
    });
    for (const type of ["dragenter", "dragover"]) {
      el.dropZone.addEventListener(type, (ev) => {
        ev.preventDefault();
        el.dropZone.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "dragend"]) {
      el.dropZone.addEventListener(type, () => el.dropZone.classList.remove("dragging"));
    }
    el.dropZone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      el.dropZone.classList.remove("dragging");
      const files = ev.dataTransfer ? [...ev.dataTransfer.files] : [];
      if (files.length) setFile(files[0], files.slice(1));
    });
    // Dropping a file anywhere else must not navigate away from the page.
    window.addEventListener("dragover", (ev) => ev.preventDefault());
    window.addEventListener("drop", (ev) => ev.preventDefault());
    el.dropZone.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        el.fileInput.click();
      }
    });
    document.addEventListener("paste", (ev) => {
      const items = ev.clipboardData ? [...ev.clipboardData.files] : [];
      const image = items.find((f) => f.type.startsWith("image/"));
      if (image) setFile(image);
    });
    el.clearQuery.addEventListener("click", () => {
      clearQuery();
      autoSearch();
    });
    el.clearAttributes.addEventListener("click", () => {
      state.attributes.clear();
      syncChips();
      autoSearch();
    });
    el.k.addEventListener("change", autoSearch);
    el.describe.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") { ev.preventDefault(); autoSearch(); }
    });
    el.rerank.addEventListener("change", () => { if (state.query) runSearch(); });
    el.minProb.addEventListener("change", () => { if (state.attributes.size) runSearch(); });
    el.download.addEventListener("click", downloadCsv);
    el.more.addEventListener("click", () => {
      state.offset = state.hits.length;
      runSearch(true);
    });
    el.refine.addEventListener("click", () => runSearch());
    for (const control of [el.constraints, el.order, el.group, el.frameFrom, el.frameTo]) {
      control.addEventListener("change", autoSearch);
    }
    el.search.addEventListener("click", () => {
      if (hasQuery()) runSearch();
      else nothingToSearch();
    });
    el.verifyButton.addEventListener("click", runVerify);
    el.reset.addEventListener("click", () => {
      clearQuery();
      state.attributes.clear();
      state.cameras.clear();
      el.describe.value = "";
      el.rerank.checked = false;
      el.minProb.value = "";
      if (state.schema) buildKSelect(state.schema.max_k);
      syncChips();
      autoSearch();
    });
  }

  async function init() {
    wire();
    renderQuery();
    try {
      const response = await fetch("/api/schema");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const schema = await response.json();
      state.schema = schema;
      buildAttributeChips(schema.tasks, schema.untrained);
      buildCameraChips(schema.cameras);
      buildKSelect(schema.max_k);
      syncChips();
      if (!attributeSearch()) {
        document.body.dataset.attributes = "unavailable";
        setStatus(idleText(), "idle");
      }
      el.info.textContent = `${schema.images} images \u00b7 ${schema.cameras.length} camera` +
        (schema.cameras.length === 1 ? "" : "s");
      window.addEventListener("popstate", readUrl);
      if (location.search) readUrl();
      document.body.dataset.ready = "true";
    } catch (exc) {
      el.info.textContent = "index unavailable";
      showError(`Could not load the attribute schema: ${exc.message || exc}`);
    }
  }

  window.attreidPage = { search: (hit) => setIndexedQuery(hit), percent, make, errorText };
  init();
})();
