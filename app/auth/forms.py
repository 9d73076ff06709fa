"""Forms for signing up, in and out. Messages are the ones a person sees."""
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, InputRequired, ValidationError

from app.services import policy


class EmptyForm(FlaskForm):
    """A submit-only form: every state-changing button still carries CSRF."""


class SignupForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired("Enter your email address.")])
    password = PasswordField("Password", validators=[InputRequired("Choose a password.")])
    age_ok = BooleanField("I am old enough")
    accept_policy = BooleanField("I have read and accept the privacy policy")
    # Opt-in (P50): unticked unless the person ticks it; nothing is recorded when left alone.
    marketing_email = BooleanField("Email me product news", default=False)

    def validate_age_ok(self, field):
        if not field.data:
            raise ValidationError(f"You must be at least {policy.enforced('MIN_AGE')} to open an account.")

    def validate_accept_policy(self, field):
        if not field.data:
            raise ValidationError("Please accept the privacy policy to continue.")


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired("Enter your email address.")])
    password = PasswordField("Password", validators=[InputRequired("Enter your password.")])


class CodeForm(FlaskForm):
    code = StringField("Authentication code", validators=[DataRequired("Enter the code.")],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric",
                                  "autocapitalize": "off", "spellcheck": "false"})


class EmailOnlyForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired("Enter your email address.")])


class NewPasswordForm(FlaskForm):
    password = PasswordField("New password", validators=[InputRequired("Choose a new password.")])
    confirm = PasswordField("Repeat the new password",
                            validators=[EqualTo("password", "The two passwords do not match.")])
