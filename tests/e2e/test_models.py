"""Model listing through the official openai SDK (and Anthropic's shape over HTTP):
the project's aliases, never the upstream models behind them."""

from __future__ import annotations

import openai
import pytest

from tests.support.harness import GatewayFactory, bearer

# The harness projects: alpha (karta profile) and beta (openai) have aliases
# "default" (gpt-4o-mini) and "smart" (gpt-4o); "dormant" has no route.
DORMANT = {"models": {"default": {"routes": [{"provider": "upstream", "model": "gpt-4o-mini"}]},
                      "dormant": {"routes": []}}}  # fmt: skip


@pytest.mark.parametrize("project", ["alpha", "beta"])
async def test_the_sdk_lists_and_retrieves_the_project_aliases(
    make_gateway: GatewayFactory, project: str
) -> None:
    client, _, creds = await make_gateway()
    api = openai.AsyncOpenAI(
        base_url=str(client.make_url(f"/v1/projects/{project}")),
        api_key=creds.read_key,  # listing needs the read scope only
        max_retries=0,
    )
    try:
        page = await api.models.list()
        assert [m.id for m in page.data] == ["default", "smart"]
        assert {m.owned_by for m in page.data} == {"karta"}
        assert all(m.created > 1_700_000_000 for m in page.data)
        model = await api.models.retrieve("smart")
        assert (model.id, model.object) == ("smart", "model")
        with pytest.raises(openai.NotFoundError) as info:
            await api.models.retrieve("gpt-4o")  # an upstream name is no alias
        assert "'gpt-4o' is not configured" in str(info.value.response.json())
    finally:
        await api.close()


async def test_an_alias_without_a_route_is_not_listed(make_gateway: GatewayFactory) -> None:
    client, _, creds = await make_gateway(projects={"alpha": DORMANT})
    resp = await client.get("/v1/projects/alpha/models", headers=bearer(creds.key))
    assert [m["id"] for m in (await resp.json())["data"]] == ["default"]
    resp = await client.get("/v1/projects/alpha/models/dormant", headers=bearer(creds.key))
    assert resp.status == 404


async def test_the_anthropic_shape(make_gateway: GatewayFactory) -> None:
    client, _, creds = await make_gateway()
    resp = await client.get("/v1/projects/alpha/v1/models", headers=bearer(creds.read_key))
    assert resp.status == 200
    body = await resp.json()
    assert [m["id"] for m in body["data"]] == ["default", "smart"]
    assert body["data"][0]["type"] == "model"
    assert body["data"][0]["created_at"].endswith("Z")
    assert (body["has_more"], body["first_id"], body["last_id"]) == (False, "default", "smart")


async def test_listing_is_authenticated_and_per_org(make_gateway: GatewayFactory) -> None:
    client, _, creds = await make_gateway()
    resp = await client.get("/v1/projects/alpha/models")
    assert resp.status == 401
    resp = await client.get("/v1/projects/alpha/models", headers=bearer(creds.other_org_key))
    assert resp.status == 404  # another org's project does not exist for it
