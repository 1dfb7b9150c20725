"""The app as a tool for AI assistants: `python app.py` with GRADIO_MCP_SERVER=True, called
with a real MCP client (the `mcp` Python SDK) over streamable HTTP at /gradio_api/mcp/.

    python -m pytest tests/test_mcp.py -m slow -q
"""

import asyncio
import base64
import io
import time
import ast
import zipfile

import pytest

from tests.helpers import AppServer, he_tile, label_id

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory):
    """The app with its MCP server on, its uploads in a folder of its own, kept 3 s."""
    cache = tmp_path_factory.mktemp("gradio-cache")
    server = AppServer({"MODEL_REPO": "", "GRADIO_MCP_SERVER": "True", "UPLOAD_TTL": "3",
                        "GRADIO_TEMP_DIR": str(cache)})
    server.cache = cache
    yield server
    server.stop()


def data_url(data, mime):
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def jpeg_bytes(seed):
    buf = io.BytesIO()
    he_tile(seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def session_call(url, calls):
    """Connect, list the tools, make the calls [(tool, arguments)]; -> (tool names, results)."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(url + "gradio_api/mcp/") as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = {t.name: t for t in (await session.list_tools()).tools}
            results = [await session.call_tool(name, args) for name, args in calls]
    return tools, results


def run(coro):
    """asyncio.run in a thread of its own: a browser test's Playwright may keep an event loop
    running in the main thread for the rest of the session."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def texts(result):
    return [c.text for c in result.content if getattr(c, "type", "") == "text"]


def test_mcp_lists_the_classifiers_as_tools_with_their_descriptions(mcp_server):
    tools, _ = run(session_call(mcp_server.url, []))
    assert {"predict", "predict_batch", "predict_series"} <= set(tools)
    assert "Classify one lung image" in tools["predict"].description
    assert "image" in tools["predict"].inputSchema["properties"]
    assert "files" in tools["predict_batch"].inputSchema["properties"]


def test_mcp_predict_classifies_a_base64_image_like_a_direct_model_call(mcp_server,
                                                                        committed_model_predict,
                                                                        tmp_path):
    data = jpeg_bytes(1)
    path = tmp_path / "tile.jpeg"
    path.write_bytes(data)
    _, (result,) = run(session_call(mcp_server.url, [
        ("predict", {"image": data_url(data, "image/jpeg")})]))
    assert not result.isError, texts(result)
    answer = ast.literal_eval(texts(result)[0])  # Gradio sends the outputs as Python text
    answer = answer[0] if isinstance(answer, (list, tuple)) else answer  # /predict's first: the label
    expected = committed_model_predict(str(path))
    assert label_id(answer["label"]) == max(expected, key=expected.get)


def test_mcp_predict_batch_returns_a_row_per_file(mcp_server):
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.jpeg", jpeg_bytes(2))
        zf.writestr("b.jpeg", jpeg_bytes(3))
    _, (result,) = run(session_call(mcp_server.url, [
        ("predict_batch", {"files": [data_url(jpeg_bytes(1), "image/jpeg"),
                                     data_url(z.getvalue(), "application/zip")]})]))
    assert not result.isError, texts(result)
    joined = "\n".join(texts(result))
    assert joined.count("Squamous") + joined.count("Adeno") + joined.count("Benign") >= 3


def test_mcp_uploads_are_deleted_like_the_others(mcp_server):
    sent = jpeg_bytes(4)
    _, (result,) = run(session_call(mcp_server.url, [
        ("predict", {"image": data_url(sent, "image/jpeg")})]))
    assert not result.isError, texts(result)

    def holding_data():  # copies of what was sent (the cache also keeps the bundles' examples)
        return [str(p) for p in mcp_server.cache.rglob("*") if p.is_file() and p.read_bytes() == sent]

    deadline = time.time() + 30
    while time.time() < deadline and holding_data():
        time.sleep(1)
    assert holding_data() == []


def test_docs_mcp_snippet_lists_the_tools_and_classifies(mcp_server, tmp_path):
    import os
    import re
    import subprocess
    import sys

    from tests.helpers import ROOT

    with open(os.path.join(ROOT, "docs", "batch.md"), encoding="utf-8") as f:
        (code,) = [b for b in re.findall(r"^```python\n(.*?)^```", f.read(), re.M | re.S)
                   if "streamablehttp_client" in b]
    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "lung_aca_1.jpeg").write_bytes(jpeg_bytes(0))
    code = code.replace("/tmp/", f"{tmp_path}/").replace("http://127.0.0.1:7860/", mcp_server.url)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "'predict_batch'" in p.stdout and "'confidences'" in p.stdout
