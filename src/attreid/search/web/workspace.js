// attreid search page, the investigator's workspace: a case (marks, notes, queries, export),
// the timeline of a person across cameras, a hit's full frame and track, comparing two cards.
// Routes: attreid.search.workspace. app.js calls window.attreidWorkspace.cardTools / marked /
// searched. Plain browser JavaScript, no dependencies.
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const ws = { caseName: "", compare: [], frameId: null, track: null };
  const STORE_KEY = `attreid-case:${location.host}`;

  // app.js's element builder and error text (it runs before any of these functions is called:
  // both scripts are deferred, the page's handlers start after them)
  const make = (...args) => window.attreidPage.make(...args);
  const errorText = (...args) => window.attreidPage.errorText(...args);

  const pct = (p) => `${(100 * p).toFixed(1)} %`;
  // a camera named by its number reads "camera 2"; a named one ("lobby") as it is
  const camLabel = (c) => (/^\d+$/.test(String(c)) ? `camera ${c}` : String(c));
  const caseUrl = (rest) => `/cases/${encodeURIComponent(ws.caseName)}${rest || ""}`;

  async function call(url, form, method) {
    const response = await fetch(url, form ? { method: method || "POST", body: form } :
      { method: method || "GET" });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error(errorText(body && body.detail, response.status));
    return body;
  }

  function formOf(fields) {
    const form = new FormData();
    for (const [k, v] of Object.entries(fields)) {
      if (v !== null && v !== undefined && v !== "") form.append(k, String(v));
    }
    return form;
  }

  function say(message, failed) {
    const node = $("#case-counts");
    node.textContent = message;
    node.dataset.state = failed ? "error" : "";
  }

  // ---- the case --------------------------------------------------------------------------

  async function loadCases(select) {
    const body = await call("/cases");
    const menu = $("#case-select");
    menu.replaceChildren(make("option", { value: "", text: "no case open" }),
      ...body.cases.map((c) => make("option", { value: c.name, text: c.name })));
    if (select !== undefined) ws.caseName = select;
    // the open case outlives a reload (kept in this browser), if it still exists
    if (!body.cases.some((c) => c.name === ws.caseName)) ws.caseName = "";
    menu.value = ws.caseName;
    remember(ws.caseName);
    await showCase();
  }

  function remember(name) {
    try {
      if (name) localStorage.setItem(STORE_KEY, name);
      else localStorage.removeItem(STORE_KEY);
    } catch (exc) { /* private mode: the case is kept for this page only */ }
  }

  function remembered() {
    try { return localStorage.getItem(STORE_KEY) || ""; } catch (exc) { return ""; }
  }

  async function showCase() {
    const open = Boolean(ws.caseName);
    for (const id of ["#case-timeline", "#case-export", "#case-notes"]) $(id).hidden = !open;
    document.body.dataset.case = ws.caseName;
    if (!open) {
      say("open a case to keep the sightings you confirm");
      return;
    }
    const c = await call(caseUrl());
    say(`${c.timeline.length} confirmed \u00b7 ${c.rejected.length} rejected \u00b7 ` +
      `${c.notes.length} note${c.notes.length === 1 ? "" : "s"}`);
    for (const format of ["html", "csv", "json"]) {
      const link = $(`#case-export-${format}`);
      link.href = caseUrl(`/export?format=${format}`);
      link.setAttribute("download", "");
    }
    return c;
  }

  async function newCase() {
    const name = $("#case-name").value.trim();
    if (!name) {
      say("give the new case a name", true);
      return;
    }
    try {
      await call("/cases", formOf({ name }));
      $("#case-name").value = "";
      await loadCases(name);
    } catch (exc) {
      say(`could not open the case: ${exc.message}`, true);
    }
  }

  async function addNote() {
    const text = $("#case-note").value.trim();
    if (!text || !ws.caseName) return;
    try {
      await call(caseUrl("/notes"), formOf({ text }));
      $("#case-note").value = "";
      await showCase();
    } catch (exc) {
      say(`note not kept: ${exc.message}`, true);
    }
  }

  function queryText(query, description, attributes) {
    if (query && query.kind === "id") return `indexed crop #${query.id}`;
    if (query && (query.kind === "upload" || query.kind === "file")) return "uploaded crop";
    return [description && `"${description}"`, attributes].filter(Boolean).join(" + ") || "";
  }

  // A mark on a card (app.js) goes into the open case with how the crop was found.
  async function marked(hit, kind, query) {
    if (!ws.caseName) return;
    try {
      await call(caseUrl("/marks"), formOf({ image_id: hit.id, mark: kind,
        distance: hit.distance, probability: hit.probability,
        same: hit.same === null || hit.same === undefined ? "" : String(hit.same),
        query: queryText(query, ws.lastDescription, ws.lastAttributes) }));
      await showCase();
    } catch (exc) {
      say(`mark not kept: ${exc.message}`, true);
    }
  }

  // Every search run while a case is open is recorded in it.
  function searched(body, query, description, attributes) {
    ws.lastDescription = description;
    ws.lastAttributes = attributes;
    if (!ws.caseName) return;
    const detail = { query: queryText(query, description, attributes), results: body.count };
    if (body.description) detail.read_as = body.description.attributes;
    call(caseUrl("/queries"), formOf({ kind: body.mode, detail: JSON.stringify(detail) }))
      .catch((exc) => say(`query not recorded: ${exc.message}`, true));
  }

  // ---- card tools: frame, where else, compare --------------------------------------------

  function cardTools(hit) {
    const tools = [];
    if (hit.time) {
      const frame = make("button", { type: "button", class: "tool-frame", text: "frame",
        title: "the full frame with this crop's box; step through its track" });
      frame.addEventListener("click", () => openFrame(hit.id));
      tools.push(frame);
    }
    const where = make("button", { type: "button", class: "tool-where", text: "where else",
      title: "every sighting of this person in the whole gallery, in time order" });
    where.addEventListener("click", () => openTimeline({ query_id: hit.id }, `crop #${hit.id}`));
    const pick = make("button", { type: "button", class: "tool-compare", text: "compare",
      "aria-pressed": ws.compare.includes(hit.id) ? "true" : "false",
      title: "pick two cards to compare (Same person?)" });
    pick.addEventListener("click", () => pickCompare(hit.id));
    tools.push(where, pick);
    // a press must not take the focus from a control being edited (a Frames value not yet
    // committed): its change event would start a new search and replace this card mid-click
    for (const tool of tools) tool.addEventListener("mousedown", (ev) => ev.preventDefault());
    return make("span", { class: "card-tools" }, ...tools);
  }

  // ---- timeline ---------------------------------------------------------------------------

  function visitRow(visit, isQuery) {
    const best = visit.crops.find((c) => c.id === visit.best) || visit.crops[0];
    const when = visit.start ? (visit.start === visit.end ? visit.start :
      `${visit.start} \u2013 ${visit.end.slice(11)}`) : `frames ${visit.first_frame}` +
      (visit.last_frame !== visit.first_frame ? `\u2013${visit.last_frame}` : "");
    const p = best.probability;
    const crops = visit.crops.slice(0, 12).map((c) => {
      const img = make("img", { src: c.url, alt: `#${c.id}`, title: `#${c.id} ${c.time || ""}` });
      img.addEventListener("click", () => (c.time ? openFrame(c.id) : null));
      return img;
    });
    const right = make("button", { type: "button", class: "mark mark-right", text: "\u2713",
      title: "confirm: this is the person (kept in the case)" });
    const wrong = make("button", { type: "button", class: "mark mark-wrong", text: "\u2717",
      title: "reject: not the person (kept in the case)" });
    const row = make("li", { class: "visit" + (isQuery ? " query" : ""), "data-id": best.id,
      "data-start": visit.start_s === null ? "" : visit.start_s, "data-camera": visit.camera },
    make("span", { class: "when", text: (isQuery ? "query \u00b7 " : "") + when }),
    make("span", { class: "camera-head", text: camLabel(visit.camera) }),
    make("span", { class: "crops" }, ...crops,
      make("span", { class: "hint", text: `${visit.crops.length} crop` +
        `${visit.crops.length === 1 ? "" : "s"}` + (p !== null && p !== undefined ?
        ` \u00b7 P(same) ${pct(p)}` : "") })),
    isQuery ? make("span") : make("span", { class: "marks" }, right, wrong));
    for (const [button, kind] of [[right, "right"], [wrong, "wrong"]]) {
      button.addEventListener("click", async () => {
        if (!ws.caseName) {
          say("open a case first: marks are kept in a case", true);
          return;
        }
        for (const c of visit.crops) await marked(c, kind, { kind: "id", id: ws.timelineQuery });
        row.dataset.mark = kind;
      });
    }
    return row;
  }

  function laneStrip(visits) {
    const times = visits.map((v) => [v.start_s, v.end_s]).filter(([a]) => a !== null);
    if (!times.length) return [];
    const t0 = Math.min(...times.map(([a]) => a));
    const t1 = Math.max(...times.map(([, b]) => b));
    const span = Math.max(t1 - t0, 1);
    const cameras = [...new Set(visits.map((v) => v.camera))];
    return cameras.map((camera) => make("div", { class: "lane", "data-camera": camera },
      make("span", { text: camLabel(camera) }),
      make("span", { class: "lane-track" }, ...visits.filter((v) => v.camera === camera &&
        v.start_s !== null).map((v) => {
        const mark = make("button", { type: "button", class: "lane-visit",
          title: `${v.start} (${v.crops.length} crops)`, "aria-label": `visit at ${v.start}` });
        mark.style.left = `${(100 * (v.start_s - t0)) / span}%`;
        mark.style.width = `${Math.max((100 * (v.end_s - v.start_s)) / span, 0.6)}%`;
        mark.addEventListener("click", () => openFrame(v.best));
        return mark;
      }))));
  }

  function renderTimeline(title, info, visits, query) {
    $("#timeline").hidden = false;
    $("#timeline-title").textContent = title;
    $("#timeline-info").textContent = info;
    $("#timeline-lanes").replaceChildren(...laneStrip(visits));
    const rows = [];
    if (query) {
      rows.push(visitRow({ camera: query.camera_name || (query.camera === null ? "?" :
        String(query.camera)), start: query.time || null, end: query.time || null,
      start_s: null, first_frame: query.frame, last_frame: query.frame, best: query.id,
      crops: [query] }, true));
    }
    rows.push(...visits.map((v) => visitRow(v, false)));
    $("#timeline-visits").replaceChildren(...rows);
    $("#timeline").scrollIntoView({ block: "start" });
  }

  async function openTimeline(fields, what) {
    ws.timelineQuery = fields.query_id;
    ws.timelineArgs = [fields, what];
    const wide = $("#timeline-distance").value;
    if (wide !== "") fields = { ...fields, max_distance: wide };
    renderTimeline(`Where else: ${what}`, "looking through the whole gallery\u2026", [], null);
    try {
      const body = await call("/timeline", formOf(fields));
      const n = body.visits.length;
      if (ws.caseName) {
        call(caseUrl("/queries"), formOf({ kind: "where else", detail: JSON.stringify({
          query: what, max_distance: fields.max_distance || null, visits: n }) }))
          .catch((exc) => say(`query not recorded: ${exc.message}`, true));
      }
      renderTimeline(`Where else: ${what}`, `${n} visit${n === 1 ? "" : "s"} in ` +
        `${body.cameras.length} camera${body.cameras.length === 1 ? "" : "s"}, in time order ` +
        `\u00b7 looked at the ${body.looked_at.toLocaleString()} nearest crops \u00b7 counted: ` +
        `${body.rule}`, body.visits, body.query);
    } catch (exc) {
      $("#timeline-info").textContent = `Timeline failed: ${exc.message}`;
    }
  }

  // The confirmed sightings of the open case, in time order.
  async function caseTimeline() {
    const c = await call(caseUrl());
    const visits = c.timeline.map((s) => ({ camera: s.camera_name || String(s.camera),
      start: s.time || null, end: s.time || null, start_s: s.seconds ?? null,
      end_s: s.seconds ?? null, first_frame: s.frame, last_frame: s.frame, best: s.id,
      crops: [{ ...s, url: `/images/${s.id}` }] }));
    renderTimeline(`Case ${c.case}: confirmed sightings`, `${visits.length} confirmed, in ` +
      "time order (export for the record with crops and frames)", visits, null);
  }

  // ---- frame viewer ------------------------------------------------------------------------

  async function openFrame(id) {
    const dialog = $("#frame-dialog");
    ws.frameId = id;
    $("#frame-image").src = `/context/${id}/frame`;
    $("#frame-title").textContent = `Crop #${id}`;
    if (!dialog.open) dialog.showModal();
    try {
      const ctx = await call(`/context/${id}`);
      ws.track = ctx;
      $("#frame-title").textContent = `${camLabel(ctx.camera_name)} \u00b7 ${ctx.time}`;
      $("#frame-where").textContent = `crop ${ctx.position + 1} of ${ctx.track.length} in ` +
        `track ${ctx.track_id}`;
      $("#frame-prev").disabled = ctx.previous === null;
      $("#frame-next").disabled = ctx.next === null;
    } catch (exc) {
      $("#frame-where").textContent = exc.message;
      $("#frame-prev").disabled = $("#frame-next").disabled = true;
    }
  }

  // ---- compare two cards ------------------------------------------------------------------

  function pickCompare(id) {
    ws.compare = ws.compare.includes(id) ? ws.compare.filter((x) => x !== id) :
      ws.compare.concat(id).slice(-2);
    for (const b of document.querySelectorAll("li[data-id] .tool-compare")) {
      const card = b.closest("li[data-id]");
      b.setAttribute("aria-pressed", String(ws.compare.includes(Number(card.dataset.id))));
    }
    $("#compare-panel").hidden = false;
    if (ws.compare.length === 2) compareCards(...ws.compare);
    else $("#verify-result").textContent = "Pick one more card to compare.";
  }

  async function compareCards(first, second) {
    const result = $("#verify-result");
    result.textContent = "Comparing\u2026";
    try {
      const body = await call("/compare", formOf({ first_id: first, second_id: second }));
      const person = body.person || [null, null];
      $("#compare-crops").replaceChildren(...[body.first, body.second].map((c, i) =>
        make("span", { class: "facts" }, make("img", { src: c.url, alt: `#${c.id}` }),
          make("br"), `#${c.id}`, make("br"),
          person[i] === null ? "" : `P(person) ${pct(person[i])}`)));
      const verdict = !body.calibrated ? (body.note || "uncalibrated: no verdict") :
        body.same ? "\u2713 the same person" : "\u2717 not the same person";
      const hit = body.as_search_hit;
      // two numbers for one pair, each with what it assumes: the cards' P(same) is a search's
      // (one crop among the gallery's strangers), one-to-one assumes "as likely as not"
      result.textContent = `distance ${body.distance.toFixed(3)}` + (hit ?
        ` \u00b7 as a search hit (the cards' P(same)): ${pct(hit.probability)}, ` +
        `${hit.same ? "\u2713 same" : "not marked"} (${hit.rule})` : "") +
        ` \u00b7 one-to-one: ${verdict}` + (body.calibrated ? ` \u00b7 ${body.rule}` : "");
      result.dataset.state = body.calibrated ? (body.same ? "same" : "different") : "uncalibrated";
    } catch (exc) {
      result.textContent = `Compare failed: ${exc.message}`;
      result.dataset.state = "error";
    }
  }

  // ---- wiring -----------------------------------------------------------------------------

  function wire() {
    $("#case-select").addEventListener("change", (ev) => {
      ws.caseName = ev.target.value;
      remember(ws.caseName);
      showCase().catch((exc) => say(exc.message, true));
    });
    $("#case-new").addEventListener("click", newCase);
    $("#case-name").addEventListener("keydown", (ev) => { if (ev.key === "Enter") newCase(); });
    $("#case-note-add").addEventListener("click", addNote);
    $("#case-note").addEventListener("keydown", (ev) => { if (ev.key === "Enter") addNote(); });
    $("#case-timeline").addEventListener("click", () => caseTimeline()
      .catch((exc) => say(exc.message, true)));
    $("#timeline-close").addEventListener("click", () => { $("#timeline").hidden = true; });
    $("#timeline-distance").addEventListener("change", () => {
      if (ws.timelineArgs) openTimeline(...ws.timelineArgs);
    });
    $("#compare-open").addEventListener("click", () => {
      $("#compare-panel").hidden = !$("#compare-panel").hidden;
    });
    $("#compare-close").addEventListener("click", () => { $("#compare-panel").hidden = true; });
    $("#frame-close").addEventListener("click", () => $("#frame-dialog").close());
    $("#frame-prev").addEventListener("click", () => ws.track && openFrame(ws.track.previous));
    $("#frame-next").addEventListener("click", () => ws.track && openFrame(ws.track.next));
    loadCases(remembered()).catch((exc) => say(`cases unavailable: ${exc.message}`, true));
  }

  window.attreidWorkspace = { cardTools, marked, searched };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();
})();
