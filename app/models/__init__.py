"""All models, imported here so Alembic and the app see the whole schema."""
from app.models.audit import AuditEvent
from app.models.billing import Budget, BudgetAlert, BudgetReservation, LedgerEntry, SpendCounter, StripeEvent, Wallet
from app.models.incident import Incident, IncidentNotice
from app.models.key import ApiKey
from app.models.mail import OutboxMessage
from app.models.policy import PolicyAcceptance, PolicyNotice, PolicyVersion
from app.models.privacy import AuditCheckpoint, ConsentEvent, DataExport, JobLock, PrivacyRequest, UsageDaily
from app.models.team import Team, TeamInvitation, TeamMember
from app.models.usage import UsageQuarantine, UsageRecord, UsageRollup
from app.models.user import OneTimeToken, RecoveryCode, User, UserSession

__all__ = ["ApiKey", "UsageRecord", "UsageQuarantine", "UsageRollup", "Team", "TeamMember", "TeamInvitation",
           "AuditEvent", "OutboxMessage", "PolicyAcceptance", "PolicyNotice", "PolicyVersion",
           "OneTimeToken", "RecoveryCode", "User", "UserSession",
           "AuditCheckpoint", "ConsentEvent", "Incident", "IncidentNotice", "DataExport", "JobLock", "PrivacyRequest",
           "UsageDaily", "Budget", "BudgetAlert", "BudgetReservation", "LedgerEntry", "SpendCounter", "StripeEvent",
           "Wallet"]
