// Jobs: batches and fine-tuning / GRPO jobs with progress, live loss and reward curves,
// events, and cancel. A running job's page refreshes itself every few seconds.

import { api } from "./app.js";
import { errorBox, h, lineChart, num, section, stateBadge, table, when } from "./ui.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled", "completed", "expired"]);

export async function jobsPage(page, [kind, id]) {
  if (kind === "fine-tuning" && id) return fineTuningJob(page, id);
  const lists = h("div", {});
  const refresh = async () => {
    const [batches, jobs] = await Promise.all([api("/v1/batches?limit=100"), api("/v1/fine_tuning/jobs?limit=100")]);
    lists.replaceChildren(
      section("Fine-tuning and reinforcement jobs", fineTuningTable(jobs.data, refresh)),
      section("Batches", batchTable(batches.data, refresh)),
    );
  };
  page.append(lists);
  await refresh();
  const timer = setInterval(() => refresh().catch(() => null), 5000);
  return () => clearInterval(timer);
}

function cancel(path, refresh, status) {
  return async () => {
    try {
      await api(path, { method: "POST" });
      await refresh();
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  };
}

function fineTuningTable(jobs, refresh) {
  return table(
    [
      { label: "job", cell: (j) => h("a", { href: `#/jobs/fine-tuning/${j.id}` }, j.id) },
      { label: "method", cell: (j) => j.method?.type || "supervised" },
      { label: "base model", key: "model" },
      { label: "status", cell: (j) => [stateBadge(j.status), j.error?.message || j.souverain?.status_reason ? h("div", { class: "reason" }, j.error?.message || j.souverain.status_reason) : null] },
      { label: "progress", cell: progressOf },
      { label: "result", cell: (j) => j.fine_tuned_model || "—" },
      { label: "created", cell: (j) => when(j.created_at * 1000) },
      { label: "", cell: (j) => cancelButton(j, `/v1/fine_tuning/jobs/${j.id}/cancel`, refresh) },
    ],
    jobs,
    { empty: "No fine-tuning job yet.", id: "fine-tuning-jobs" },
  );
}

function progressOf(j) {
  const extra = j.souverain || {};
  if (extra.step === undefined || !extra.total_steps) return "—";
  return h("div", {}, h("progress", { max: extra.total_steps, value: extra.step }), ` ${extra.step}/${extra.total_steps}`);
}

function cancelButton(job, path, refresh) {
  if (FINISHED.has(job.status)) return null;
  const status = h("span", {});
  return h("span", {}, h("button", { type: "button", class: "small danger", onclick: cancel(path, refresh, status) }, "Cancel"), status);
}

function batchTable(batches, refresh) {
  return table(
    [
      { label: "batch", cell: (b) => h("code", {}, b.id) },
      { label: "endpoint", key: "endpoint" },
      { label: "status", cell: (b) => stateBadge(b.status) },
      { label: "lines", cell: (b) => { const c = b.request_counts || {}; return h("div", {}, h("progress", { max: c.total || 1, value: (c.completed || 0) + (c.failed || 0) }), ` ${num(c.completed)} done, ${num(c.failed)} failed of ${num(c.total)}`); } },
      { label: "created", cell: (b) => when(b.created_at * 1000) },
      { label: "", cell: (b) => cancelButton(b, `/v1/batches/${b.id}/cancel`, refresh) },
    ],
    batches,
    { empty: "No batch yet.", id: "batches" },
  );
}

async function fineTuningJob(page, id) {
  const body = h("div", { id: "job-detail" });
  page.append(h("p", {}, h("a", { href: "#/jobs" }, "← all jobs")), body);
  const draw = async () => {
    const [job, events] = await Promise.all([
      api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}`),
      api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?limit=1000`),
    ]);
    body.replaceChildren(jobDetail(job, events.data.slice().reverse(), draw));
    return job;
  };
  const job = await draw();
  if (FINISHED.has(job.status)) return null;
  const timer = setInterval(() => draw().catch(() => null), 3000);
  return () => clearInterval(timer);
}

function jobDetail(job, events, refresh) {
  const metrics = events.filter((e) => e.type === "metrics" && e.data && e.data.step !== undefined);
  const series = (name, key) => ({ name, points: metrics.filter((e) => typeof e.data[key] === "number").map((e) => [e.data.step, e.data[key]]) });
  const curves = [series("training loss", "train_loss"), series("mean reward", "reward_mean")].filter((one) => one.points.length);
  return h(
    "div",
    {},
    section(
      `${job.id}`,
      h("p", {}, stateBadge(job.status), ` ${job.method?.type || "supervised"} on ${job.model}`, job.fine_tuned_model ? [" → ", h("strong", {}, job.fine_tuned_model)] : null),
      progressOf(job),
      cancelButton(job, `/v1/fine_tuning/jobs/${job.id}/cancel`, refresh),
    ),
    section("Curves", curves.length ? curves.map((one, i) => lineChart([one], { id: `curve-${i}` })) : h("p", { class: "muted" }, "No step has been measured yet.")),
    section(
      "Events",
      table(
        [
          { label: "time", cell: (e) => when(e.created_at * 1000) },
          { label: "level", key: "level" },
          { label: "message", key: "message" },
        ],
        events.slice().reverse(),
        { id: "job-events" },
      ),
    ),
  );
}
