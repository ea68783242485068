"""gRPC adapter for meterwire.budget.v1.BudgetService (budgets land with the budget issue)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.budget.v1 import budget_service_pb2_grpc as pb_grpc
from services.auth import Role, current_principal, requires
from services.errors import NotBuiltError

_CAPABILITY = "budget enforcement"


class BudgetServicer(pb_grpc.BudgetServiceServicer):
    @requires(Role.ADMIN)
    async def CreateBudget(
        self, request: pb.CreateBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateBudgetResponse:
        raise NotBuiltError("BudgetService.CreateBudget", _CAPABILITY)

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetBudget(
        self, request: pb.GetBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetBudgetResponse:
        raise NotBuiltError("BudgetService.GetBudget", _CAPABILITY)

    @requires(Role.ADMIN, Role.REPORTER)
    async def ListBudgets(
        self, request: pb.ListBudgetsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListBudgetsResponse:
        current_principal().visible_environments(request.environment_ids, field="environment_ids")
        raise NotBuiltError("BudgetService.ListBudgets", _CAPABILITY)

    @requires(Role.ADMIN)
    async def UpdateBudget(
        self, request: pb.UpdateBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UpdateBudgetResponse:
        raise NotBuiltError("BudgetService.UpdateBudget", _CAPABILITY)

    @requires(Role.ADMIN)
    async def DeleteBudget(
        self, request: pb.DeleteBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteBudgetResponse:
        raise NotBuiltError("BudgetService.DeleteBudget", _CAPABILITY)

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetBudgetStatus(
        self, request: pb.GetBudgetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetBudgetStatusResponse:
        raise NotBuiltError("BudgetService.GetBudgetStatus", _CAPABILITY)

    @requires(Role.ADMIN, Role.GATEWAY)
    async def CheckBudget(
        self, request: pb.CheckBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CheckBudgetResponse:
        principal = current_principal()
        principal.require_environment(request.request.environment_id or principal.environment_id or "")
        raise NotBuiltError("BudgetService.CheckBudget", _CAPABILITY)

    @requires(Role.GATEWAY)
    async def WatchBudgetStates(
        self, request: pb.WatchBudgetStatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchBudgetStatesResponse]:
        current_principal().require_environment(request.environment_id)
        raise NotBuiltError("BudgetService.WatchBudgetStates", _CAPABILITY)
        yield pb.WatchBudgetStatesResponse()  # pragma: no cover - makes this an async generator, as the stream needs

    @requires(Role.ADMIN, Role.REPORTER)
    async def ListBudgetAlerts(
        self, request: pb.ListBudgetAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListBudgetAlertsResponse:
        current_principal().visible_environments(request.environment_ids, field="environment_ids")
        raise NotBuiltError("BudgetService.ListBudgetAlerts", _CAPABILITY)

    @requires(Role.ADMIN, Role.REPORTER)
    async def ListBudgetWindows(
        self, request: pb.ListBudgetWindowsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListBudgetWindowsResponse:
        raise NotBuiltError("BudgetService.ListBudgetWindows", _CAPABILITY)

    @requires(Role.ADMIN, Role.REPORTER)
    async def WatchBudgetAlerts(
        self, request: pb.WatchBudgetAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchBudgetAlertsResponse]:
        current_principal().visible_environments(request.environment_ids, field="environment_ids")
        raise NotBuiltError("BudgetService.WatchBudgetAlerts", _CAPABILITY)
        yield pb.WatchBudgetAlertsResponse()  # pragma: no cover - makes this an async generator, as the stream needs

    @requires(Role.ADMIN)
    async def CreateWebhook(
        self, request: pb.CreateWebhookRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateWebhookResponse:
        raise NotBuiltError("BudgetService.CreateWebhook", _CAPABILITY)

    @requires(Role.ADMIN)
    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListWebhooksResponse:
        raise NotBuiltError("BudgetService.ListWebhooks", _CAPABILITY)

    @requires(Role.ADMIN)
    async def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteWebhookResponse:
        raise NotBuiltError("BudgetService.DeleteWebhook", _CAPABILITY)
