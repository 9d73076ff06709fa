"""Forms of the account page."""
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, InputRequired, Length

from app.forms import Form


class ProfileFieldForm(Form):
    value = StringField("Value", validators=[Length(max=120, message="Use at most 120 characters.")])


class ChangeEmailForm(Form):
    email = EmailField("New email", validators=[DataRequired("Enter the new address.")])
    password = PasswordField("Current password", validators=[InputRequired("Enter your password.")])


class ChangePasswordForm(Form):
    current = PasswordField("Current password", validators=[InputRequired("Enter your current password.")])
    password = PasswordField("New password", validators=[InputRequired("Choose a new password.")])
    confirm = PasswordField("Repeat the new password",
                            validators=[EqualTo("password", "The two passwords do not match.")])


class ReauthForm(Form):
    password = PasswordField("Password", validators=[InputRequired("Enter your password.")])
    code = StringField("Authentication code", render_kw={"autocomplete": "one-time-code",
                                                          "inputmode": "numeric"})


class ConfirmTotpForm(Form):
    code = StringField("Code from your app", validators=[DataRequired("Enter the 6-digit code.")],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"})
