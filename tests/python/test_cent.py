"""PyPI `cent` (the Centrifugo server API client) against the real herald binary, parsed with
cent's own response models."""
import pytest
from cent import (
    BatchRequest,
    BatchResult,
    BroadcastRequest,
    BroadcastResult,
    ChannelsRequest,
    ChannelsResult,
    Client,
    DisconnectRequest,
    Disconnect,
    HistoryRemoveRequest,
    HistoryRequest,
    HistoryResult,
    InfoRequest,
    InfoResult,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    PublishResult,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.exceptions import CentApiResponseError, CentError, CentUnauthorizedError


def test_publish_then_history(cent_client):
    results = [cent_client.publish(PublishRequest(channel="news", data={"n": n}, tags={"n": str(n)})) for n in range(1, 11)]
    assert all(isinstance(r, PublishResult) for r in results)
    assert [r.offset for r in results] == list(range(1, 11))
    assert len({r.epoch for r in results}) == 1 and results[0].epoch

    history = cent_client.history(HistoryRequest(channel="news", limit=-1))
    assert isinstance(history, HistoryResult)
    assert [p.data for p in history.publications] == [{"n": n} for n in range(1, 11)]
    assert [p.offset for p in history.publications] == list(range(1, 11))
    assert history.publications[2].tags == {"n": "3"}
    assert history.offset == 10
    assert history.epoch == results[0].epoch


def test_history_limit_since_reverse_and_top(cent_client):
    epoch = ""
    for n in range(1, 21):
        epoch = cent_client.publish(PublishRequest(channel="log", data={"n": n})).epoch

    top = cent_client.history(HistoryRequest(channel="log", limit=0))
    assert top.publications == []
    assert (top.offset, top.epoch) == (20, epoch)

    first = cent_client.history(HistoryRequest(channel="log", limit=3))
    assert [p.data["n"] for p in first.publications] == [1, 2, 3]

    last = cent_client.history(HistoryRequest(channel="log", limit=3, reverse=True))
    assert [p.data["n"] for p in last.publications] == [20, 19, 18]

    since = cent_client.history(HistoryRequest(channel="log", limit=4, since=StreamPosition(offset=10, epoch=epoch)))
    assert [p.data["n"] for p in since.publications] == [11, 12, 13, 14]

    with pytest.raises(CentApiResponseError) as raised:
        cent_client.history(HistoryRequest(channel="log", limit=4, since=StreamPosition(offset=10, epoch="other")))
    assert raised.value.code == 112


def test_history_remove(cent_client):
    for n in range(3):
        cent_client.publish(PublishRequest(channel="gone", data={"n": n}))
    cent_client.history_remove(HistoryRemoveRequest(channel="gone"))
    history = cent_client.history(HistoryRequest(channel="gone", limit=-1))
    assert history.publications == []
    assert history.offset == 3


def test_idempotent_publish(cent_client):
    first = cent_client.publish(PublishRequest(channel="idem", data={"x": 1}, idempotency_key="once"))
    again = cent_client.publish(PublishRequest(channel="idem", data={"x": 1}, idempotency_key="once"))
    assert (again.offset, again.epoch) == (first.offset, first.epoch)
    assert len(cent_client.history(HistoryRequest(channel="idem", limit=-1)).publications) == 1


def test_skip_history(cent_client):
    cent_client.publish(PublishRequest(channel="skip", data={"kept": False}, skip_history=True))
    assert cent_client.history(HistoryRequest(channel="skip", limit=-1)).publications == []


def test_broadcast(cent_client):
    result = cent_client.broadcast(BroadcastRequest(channels=["a", "b", "chat:c"], data={"hello": "all"}))
    assert isinstance(result, BroadcastResult)
    assert len(result.responses) == 3
    assert all(r.error is None and r.result is not None for r in result.responses), result
    assert [r.result.offset for r in result.responses] == [1, 1, 1]
    for channel in ["a", "b", "chat:c"]:
        history = cent_client.history(HistoryRequest(channel=channel, limit=-1))
        assert [p.data for p in history.publications] == [{"hello": "all"}]


def test_broadcast_reports_errors_per_channel(cent_client):
    result = cent_client.broadcast(BroadcastRequest(channels=["fine", "nope:x"], data={}))
    assert result.responses[0].error is None
    assert result.responses[1].error is not None and result.responses[1].error.code == 102


def test_batch(cent_client):
    result = cent_client.batch(
        BatchRequest(
            requests=[
                PublishRequest(channel="batch", data={"i": 1}),
                PublishRequest(channel="batch", data={"i": 2}),
                HistoryRequest(channel="batch", limit=-1),
                PresenceStatsRequest(channel="batch"),
            ]
        )
    )
    assert isinstance(result, BatchResult)
    first, second, history, stats = result.replies
    assert isinstance(first, PublishResult) and first.offset == 1
    assert isinstance(second, PublishResult) and second.offset == 2
    assert isinstance(history, HistoryResult)
    assert [p.data for p in history.publications] == [{"i": 1}, {"i": 2}]
    assert isinstance(stats, PresenceStatsResult) and stats.num_clients == 0


def test_info_and_channels(cent_client, raw_clients):
    info = cent_client.info(InfoRequest())
    assert isinstance(info, InfoResult)
    assert len(info.nodes) == 1
    node = info.nodes[0]
    assert node.uid and node.name
    assert node.num_clients == 0

    alice = raw_clients("alice")
    bob = raw_clients("bob")
    for client in (alice, bob):
        assert "subscribe" in client.command("subscribe", {"channel": "room"})
    assert "subscribe" in alice.command("subscribe", {"channel": "chat:side"})

    info = cent_client.info(InfoRequest())
    assert (info.nodes[0].num_clients, info.nodes[0].num_users) == (2, 2)
    assert info.nodes[0].num_channels == 2

    channels = cent_client.channels(ChannelsRequest())
    assert isinstance(channels, ChannelsResult)
    assert {name: c.num_clients for name, c in channels.channels.items()} == {"room": 2, "chat:side": 1}
    only_chat = cent_client.channels(ChannelsRequest(pattern="chat:*"))
    assert list(only_chat.channels) == ["chat:side"]


def test_presence_and_stats(cent_client, raw_clients):
    alice = raw_clients("alice", info={"role": "host"})
    bob = raw_clients("bob")
    bob2 = raw_clients("bob")
    for client in (alice, bob, bob2):
        assert "subscribe" in client.command("subscribe", {"channel": "lobby"})

    presence = cent_client.presence(PresenceRequest(channel="lobby"))
    assert isinstance(presence, PresenceResult)
    assert {cid: info.user for cid, info in presence.presence.items()} == {
        alice.client_id: "alice",
        bob.client_id: "bob",
        bob2.client_id: "bob",
    }
    assert presence.presence[alice.client_id].client == alice.client_id
    assert presence.presence[alice.client_id].conn_info == {"role": "host"}

    stats = cent_client.presence_stats(PresenceStatsRequest(channel="lobby"))
    assert isinstance(stats, PresenceStatsResult)
    assert (stats.num_clients, stats.num_users) == (3, 2)


def test_publication_reaches_a_websocket_subscriber(cent_client, raw_clients):
    client = raw_clients("reader")
    assert "subscribe" in client.command("subscribe", {"channel": "live"})
    result = cent_client.publish(PublishRequest(channel="live", data={"via": "cent"}))
    push = client.push(lambda p: p.get("channel") == "live" and "pub" in p)
    assert push["pub"]["data"] == {"via": "cent"}
    assert push["pub"]["offset"] == result.offset


def test_server_side_subscribe_and_unsubscribe(cent_client, raw_clients):
    client = raw_clients("target")
    cent_client.subscribe(SubscribeRequest(user="target", channel="pushed"))
    push = client.push(lambda p: p.get("channel") == "pushed" and "subscribe" in p)
    assert push["channel"] == "pushed"

    cent_client.publish(PublishRequest(channel="pushed", data={"n": 1}))
    pub = client.push(lambda p: p.get("channel") == "pushed" and "pub" in p)
    assert pub["pub"]["data"] == {"n": 1}
    stats = cent_client.presence_stats(PresenceStatsRequest(channel="pushed"))
    assert stats.num_clients == 1

    cent_client.unsubscribe(UnsubscribeRequest(user="target", channel="pushed"))
    gone = client.push(lambda p: p.get("channel") == "pushed" and "unsubscribe" in p)
    assert gone["unsubscribe"].get("code", 0) in (0, 2000), gone
    assert cent_client.presence_stats(PresenceStatsRequest(channel="pushed")).num_clients == 0


def test_disconnect_user(cent_client, raw_clients):
    client = raw_clients("kicked")
    other = raw_clients("stays")
    cent_client.disconnect(DisconnectRequest(user="kicked"))
    code, _reason = client.wait_closed()
    assert code == 3503  # force disconnect, no reconnect
    assert "subscribe" in other.command("subscribe", {"channel": "still-here"})


def test_disconnect_with_custom_code(cent_client, raw_clients):
    client = raw_clients("bounced")
    cent_client.disconnect(DisconnectRequest(user="bounced", disconnect=Disconnect(code=3011, reason="force reconnect")))
    assert client.wait_closed() == (3011, "force reconnect")


def test_unknown_namespace_raises_cent_error_with_code(cent_client):
    with pytest.raises(CentApiResponseError) as raised:
        cent_client.publish(PublishRequest(channel="nope:x", data={}))
    assert raised.value.code == 102
    assert isinstance(raised.value, CentError)
    with pytest.raises(CentApiResponseError) as raised:
        cent_client.history(HistoryRequest(channel="nope:x", limit=1))
    assert raised.value.code == 102


def test_wrong_api_key_raises_unauthorized(herald):
    with pytest.raises(CentUnauthorizedError):
        Client(herald.api_url, "wrong-key", timeout=5).info(InfoRequest())
