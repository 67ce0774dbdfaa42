"""PyPI `cent` (the Centrifugo server API client) against the real herald binary."""
import asyncio
import base64
import hashlib
import hmac
import json

import pytest
import websockets
from cent import (
    BatchRequest,
    BroadcastRequest,
    CentApiResponseError,
    CentUnauthorizedError,
    ChannelsRequest,
    Client,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)

from conftest import API_KEY, SECRET


def token(user):
    def b64(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64({'sub': user})}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def api(base):
    return Client(f"{base}/api", API_KEY)


def test_publish_history_and_remove(herald):
    client = api(herald)
    for n in range(1, 4):
        result = client.publish(PublishRequest(channel="news", data={"n": n}, tags={"kind": "test"}))
        assert result.offset == n
        assert result.epoch
    history = client.history(HistoryRequest(channel="news", limit=10))
    assert [p.data["n"] for p in history.publications] == [1, 2, 3]
    assert history.publications[0].tags == {"kind": "test"}
    reverse = client.history(HistoryRequest(channel="news", limit=2, reverse=True))
    assert [p.offset for p in reverse.publications] == [3, 2]
    since = client.history(HistoryRequest(channel="news", limit=10, since=StreamPosition(offset=1, epoch=history.epoch)))
    assert [p.offset for p in since.publications] == [2, 3]
    client.history_remove(HistoryRemoveRequest(channel="news"))
    assert client.history(HistoryRequest(channel="news", limit=10)).publications == []


def test_broadcast_batch_info(herald):
    client = api(herald)
    result = client.broadcast(BroadcastRequest(channels=["a", "b"], data={"all": True}))
    assert [r.result.offset for r in result.responses] == [1, 1]
    batch = client.batch(
        BatchRequest(
            requests=[
                PublishRequest(channel="a", data={"x": 1}),
                PublishRequest(channel="b", data={"x": 2}),
            ]
        )
    )
    assert [r.offset for r in batch.replies] == [2, 2]
    info = client.info(InfoRequest())
    assert len(info.nodes) == 1
    assert info.nodes[0].uid


def test_errors_carry_the_code(herald):
    client = api(herald)
    with pytest.raises(CentApiResponseError) as error:
        client.publish(PublishRequest(channel="nope:x", data={}))
    assert error.value.code == 102
    with pytest.raises(CentUnauthorizedError):
        Client(f"{herald}/api", "wrong-key").info(InfoRequest())


def test_presence_channels_subscribe_unsubscribe_disconnect(herald):
    client = api(herald)

    async def scenario():
        url = herald.replace("http://", "ws://") + "/connection/websocket"
        async with websockets.connect(url) as socket:
            await socket.send(json.dumps({"id": 1, "connect": {"token": token("u1")}}) + "\n"
                              + json.dumps({"id": 2, "subscribe": {"channel": "room"}}))

            async def next_message(predicate):
                while True:
                    frame = await asyncio.wait_for(socket.recv(), 10)
                    for line in frame.split("\n"):
                        message = json.loads(line)
                        if predicate(message):
                            return message

            await next_message(lambda m: m.get("id") == 2)
            presence = client.presence(PresenceRequest(channel="room"))
            assert [c.user for c in presence.presence.values()] == ["u1"]
            stats = client.presence_stats(PresenceStatsRequest(channel="room"))
            assert (stats.num_clients, stats.num_users) == (1, 1)
            channels = client.channels(ChannelsRequest(pattern="ro*"))
            assert channels.channels["room"].num_clients == 1

            client.subscribe(SubscribeRequest(user="u1", channel="extra"))
            pushed = await next_message(lambda m: m.get("push", {}).get("channel") == "extra")
            assert "subscribe" in pushed["push"]
            client.unsubscribe(UnsubscribeRequest(user="u1", channel="extra"))
            pushed = await next_message(lambda m: "unsubscribe" in m.get("push", {}))
            assert pushed["push"]["unsubscribe"]["code"] == 2000
            client.disconnect(DisconnectRequest(user="u1"))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await next_message(lambda m: False)
            assert closed.value.rcvd.code == 3503

    asyncio.run(scenario())
