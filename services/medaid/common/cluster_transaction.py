"""MULTI/EXEC on a Redis Cluster that follows an ASK redirection while a slot migrates."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.cluster import PRIMARY


class ClusterTransaction(redis.asyncio.cluster.TransactionStrategy):
    """redis-py's MULTI/EXEC on a cluster, following an ASK redirection. While a slot migrates (a
    reshard), its master answers a command on a key it no longer holds, moved already or never there,
    with ASK: the transaction is for the importing master, sent after ASKING on the same connection.
    redis-py takes an ASK for a MOVED instead (the whole slot in its map goes to the importing master,
    which refuses the transaction without ASKING) and fails the call with the AskError, a reply no
    caller reads as "resend". The slot map is left as it is; a MOVED (the migration ended, a failover)
    updates it at once. A transaction whose keys are split between the two masters meets TRYAGAIN
    until the last of them has moved: redis-py raises TryAgainError, which the services answer
    STORE_UNAVAILABLE."""

    def __init__(self, pipe: redis.asyncio.cluster.ClusterPipeline) -> None:
        super().__init__(pipe)
        self._ask: redis.exceptions.AskError | None = None

    async def reset(self) -> None:
        self._ask = None
        await super().reset()

    def _get_client_and_connection_for_transaction(self) -> tuple[Any, Any]:
        if self._ask is None:
            return super()._get_client_and_connection_for_transaction()
        nodes = self._pipe.cluster_client.nodes_manager
        node = nodes.get_node(host=self._ask.host, port=self._ask.port)
        if node is None:  # a master that holds no slot yet: one just added, importing its first
            node = redis.asyncio.cluster.ClusterNode(self._ask.host, self._ask.port, PRIMARY,
                                                     **nodes.connection_kwargs)
            nodes.set_nodes(nodes.nodes_cache, {node.name: node})
        self._transaction_node = node
        if not self._transaction_connection:
            self._transaction_connection = node.acquire_connection()
        return node, self._transaction_connection

    async def _execute_transaction_with_retries(self, stack: Any, raise_on_error: bool) -> Any:
        """Retried on a redirection and on the errors its client retries, not on a timeout: redis-py
        retries every error of `RedisCluster`'s list, TimeoutError included, so a transaction meeting a
        frozen master waited the command timeout three times where a single command waits it once."""
        retried = (*type(self._pipe.cluster_client).ERRORS_ALLOW_RETRY, *self.SLOT_REDIRECT_ERRORS)
        return await self._retry.call_with_retry(
            lambda: self._execute_transaction(stack, raise_on_error),
            lambda error, failures: self._reinitialize_on_error(error, failures),
            is_retryable=lambda error: isinstance(error, retried), with_failure_count=True)

    async def _execute_transaction(self, stack: Any, raise_on_error: bool) -> Any:
        if self._ask is not None and not self._watching:
            _, connection = self._get_client_and_connection_for_transaction()
            await connection.send_command("ASKING")
            await connection.read_response()
        return await super()._execute_transaction(stack, raise_on_error)

    async def _reinitialize_on_error(self, error: Any, failure_count: int) -> None:
        if isinstance(error, redis.exceptions.AskError) and not self._watching:
            self._ask = error
            if self._transaction_connection is not None and self._transaction_node is not None:
                await self._transaction_connection.disconnect()
                self._transaction_node.release(self._transaction_connection)
                self._transaction_connection = None
            self._executing = False
            return
        self._ask = None
        if isinstance(error, redis.exceptions.MovedError):
            await self._pipe.cluster_client.nodes_manager.move_slot(error)
        await super()._reinitialize_on_error(error, failure_count)
