"""/metrics parses as Prometheus text and its counters move as requests are served."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import MODEL, chat_body


def scrape(client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.labels.get("model") == MODEL:
                samples[sample.name] = sample.value
    return samples


def test_counters_move_as_requests_are_served(make_client):
    client = make_client(num_blocks=256)
    before = scrape(client)
    assert before["seekserve_kv_blocks_total"] == 256
    assert before["seekserve_kv_blocks_used"] == 0
    assert before["seekserve_requests_admitted_total"] == 0
    system = {"role": "system", "content": "Answer briefly and precisely. " * 12}
    usages = []
    for question in ("First?", "Second?"):
        body = chat_body(messages=[system, {"role": "user", "content": question}], max_tokens=3)
        usages.append(client.post("/chat/completions", json=body).json()["usage"])
    after = scrape(client)
    assert after["seekserve_requests_admitted_total"] == 2
    assert after["seekserve_prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usages)
    assert after["seekserve_generation_tokens_total"] == 6
    # the second request reused the shared system prompt: exact engine count, >= reported
    hit = after["seekserve_prefix_cache_hit_tokens_total"]
    assert hit >= usages[1]["prompt_cache_hit_tokens"] > 0
    assert after["seekserve_prefix_cache_miss_tokens_total"] == (
        after["seekserve_prompt_tokens_total"] - hit
    )
    assert after["seekserve_kv_blocks_used"] == 0
    assert after["seekserve_prefix_cache_blocks"] > 0
    assert after["seekserve_prefix_cache_bytes"] > 0
    assert after["seekserve_requests_running"] == after["seekserve_requests_waiting"] == 0
