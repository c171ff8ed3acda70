// Playground: chat with any model the caller may use, streamed through /v1 exactly as an
// SDK would call it; reasoning shown apart from the answer; beside it the datacenter that
// answered, the tokens, and the energy and CO2e of the request once it has settled.

import { api, apiError } from "./app.js";
import { errorBox, field, h, kwh, num, qty, section, select } from "./ui.js";

export async function playground(page) {
  const models = (await api("/v1/models")).data.map((m) => m.id);
  const model = select("model", models, models[0]);
  const system = h("textarea", { name: "system", rows: 2, placeholder: "System prompt (optional)", maxlength: 20000 });
  const prompt = h("textarea", { name: "prompt", rows: 4, required: true, placeholder: "Ask something…", maxlength: 100000 });
  const reasoning = h("input", { type: "checkbox", name: "reasoning" });
  const temperature = h("input", { type: "number", name: "temperature", min: 0, max: 2, step: 0.1, value: 0.7, class: "tiny" });
  const maxTokens = h("input", { type: "number", name: "max_tokens", min: 1, max: 4096, value: 256, class: "tiny" });
  const send = h("button", { type: "submit", id: "send" }, "Send");
  const stop = h("button", { type: "button", class: "small", hidden: true }, "Stop");
  const thinking = h("div", { class: "thinking", id: "reasoning-output", hidden: true });
  const answer = h("div", { class: "answer", id: "answer-output" });
  const facts = h("div", { class: "facts", id: "answer-facts" });
  const form = h(
    "form",
    { id: "playground-form" },
    h("div", { class: "inline" }, field("model", model), field("temperature", temperature), field("max tokens", maxTokens), h("label", { class: "check" }, reasoning, " reasoning mode")),
    system,
    prompt,
    h("div", {}, send, " ", stop),
  );
  let controller = null;
  stop.addEventListener("click", () => controller?.abort());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    controller = new AbortController();
    [send.disabled, stop.hidden] = [true, false];
    thinking.replaceChildren();
    thinking.hidden = true;
    answer.replaceChildren();
    facts.replaceChildren(h("span", { class: "muted" }, "waiting for the first token…"));
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value }] : []), { role: "user", content: prompt.value }];
    const body = { model: model.value, messages, stream: true, stream_options: { include_usage: true }, temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) };
    if (reasoning.checked) body.prompt_mode = "reasoning";
    try {
      await stream(body, controller.signal, { thinking, answer, facts });
    } catch (error) {
      if (error.name !== "AbortError") answer.append(errorBox(error));
    } finally {
      [send.disabled, stop.hidden] = [false, true];
    }
  });
  page.append(section("Chat", form), section("Answer", thinking, answer, facts));
}

async function stream(body, signal, out) {
  const started = performance.now();
  const response = await api("/v1/chat/completions", { method: "POST", body, raw: true, headers: { Accept: "text/event-stream" } });
  if (!response.ok) throw await apiError(response);
  const requestId = response.headers.get("x-request-id");
  const datacenter = response.headers.get("x-souverain-datacenter");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener("abort", () => reader.cancel());
  let buffer = "";
  let usage = null;
  let firstToken = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices?.[0]?.delta || {};
        if (delta.reasoning_content) {
          out.thinking.hidden = false;
          out.thinking.append(delta.reasoning_content);
        }
        if (delta.content) {
          firstToken ??= performance.now() - started;
          out.answer.append(delta.content);
        }
      }
    }
  }
  out.facts.replaceChildren(factsList({ datacenter, usage, firstToken, total: performance.now() - started }));
  if (requestId) settled(requestId).then(async (record) => record && out.facts.append(meterLine(record, await intensityOf(record.datacenter_id))));
}

async function intensityOf(datacenter) {
  const found = (await api("/api/datacenters")).find((dc) => dc.id === datacenter);
  return found ? found.carbon_intensity_now ?? found.carbon_intensity : null;
}

function factsList({ datacenter, usage, firstToken, total }) {
  const item = (name, text) => h("span", { class: "fact", dataset: { fact: name } }, text);
  return h(
    "div",
    {},
    item("datacenter", `answered in ${datacenter || "?"}`),
    usage ? item("tokens", `${num(usage.prompt_tokens)} prompt + ${num(usage.completion_tokens)} completion tokens${usage.completion_tokens_details?.reasoning_tokens ? ` (${num(usage.completion_tokens_details.reasoning_tokens)} reasoning)` : ""}`) : null,
    firstToken !== null ? item("ttft", `first token ${num(firstToken)} ms`) : null,
    item("latency", `total ${num(total)} ms`),
  );
}

// Measured energy and CO2e once the replica's energy interval is attributed; until then the
// gateway's estimate, and its CO2e at the datacenter's grid intensity of this hour.
function meterLine(record, intensity) {
  const joules = record.energy_j ?? record.energy_estimate_j ?? 0;
  const estimated = intensity === null ? "CO2e once the energy interval closes" : `≈ ${qty((joules / 3.6e6) * intensity, 4)} gCO2e (estimate at ${num(intensity)} gCO2e/kWh)`;
  const co2e = record.co2e_g === null ? estimated : `${qty(record.co2e_g, 4)} gCO2e`;
  const cost = record.currency ? `cost ${qty(record.cost, 6)} ${record.currency}` : "no price set for this model";
  return h("div", { class: "fact", dataset: { fact: "energy" } }, `energy ${kwh(joules)} kWh (${num(joules, 2)} J${record.energy_j === null ? ", estimate" : ""}) · ${co2e} · ${cost}`);
}

// The request's usage record, once it has settled (a moment after the last token).
async function settled(requestId) {
  for (let attempt = 0; attempt < 10; attempt += 1) {
    const found = await api("/api/usage?limit=20&group_by=model");
    const record = found.records.find((r) => r.id === requestId);
    if (record && record.status !== "open") return record;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  return null;
}
