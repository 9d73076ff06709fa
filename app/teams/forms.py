"""Forms of the teams pages; each bad value gets its own message by its field."""
from __future__ import annotations

from wtforms import BooleanField, EmailField, SelectField, StringField
from wtforms.validators import DataRequired, Length, Optional

from app.forms import Form

ROLE_CHOICES = [("member", "Member: uses the team, sees own usage"),
                ("admin", "Admin: also invites, removes members, manages keys"),
                ("owner", "Owner: everything, including roles and deletion")]


class CreateTeamForm(Form):
    name = StringField("Team name", validators=[DataRequired("Give the team a name."),
                                                Length(max=100, message="Use at most 100 characters.")])
    slug = StringField("Address (optional)", validators=[Optional(),
                                                         Length(max=48, message="Use at most 48 characters.")])


class TeamSettingsForm(Form):
    name = StringField("Team name", validators=[DataRequired("Give the team a name."),
                                                Length(max=100, message="Use at most 100 characters.")])
    members_make_keys = BooleanField("Members may make API keys for the team")


class InviteForm(Form):
    email = EmailField("Email address", validators=[DataRequired("Enter the address to invite."),
                                                    Length(max=320, message="That address is too long.")])
    role = SelectField("Role", choices=ROLE_CHOICES, default="member")


class RoleForm(Form):
    role = SelectField("Role", choices=[(v, v.capitalize()) for v, _ in ROLE_CHOICES])


class DeleteTeamForm(Form):
    confirm_name = StringField("Type the team's name to confirm",
                               validators=[DataRequired("Type the team's name to confirm.")])
