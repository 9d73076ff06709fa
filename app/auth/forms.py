"""Forms for signing up, in and out. Messages are the ones a person sees."""
from wtforms import BooleanField, EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, InputRequired, ValidationError

from app.forms import EmptyForm, Form  # noqa: F401  (EmptyForm: imported from here by the views)
from app.services import ServiceError, policy
from app.services.accounts import check_password_rules, normalize_email


class SignupForm(Form):
    email = EmailField("Email", validators=[DataRequired("Enter your email address.")])
    password = PasswordField("Password", validators=[InputRequired("Choose a password.")])
    age_ok = BooleanField("I am old enough")
    accept_policy = BooleanField("I have read and accept the privacy policy")
    # Opt-in (P50): unticked unless the person ticks it; nothing is recorded when left alone.
    marketing_email = BooleanField("Email me product news", default=False)

    # The service checks these again; checked here too, every field's message
    # shows at once instead of one more after each submit.
    def validate_email(self, field):
        try:
            normalize_email(field.data or "")
        except ServiceError as exc:
            raise ValidationError(str(exc)) from None

    def validate_password(self, field):
        try:
            check_password_rules(field.data or "")
        except ServiceError as exc:
            raise ValidationError(str(exc)) from None

    def validate_age_ok(self, field):
        if not field.data:
            raise ValidationError(f"You must be at least {policy.enforced('MIN_AGE')} to open an account.")

    def validate_accept_policy(self, field):
        if not field.data:
            raise ValidationError("Please accept the privacy policy to continue.")


class LoginForm(Form):
    email = EmailField("Email", validators=[DataRequired("Enter your email address.")])
    password = PasswordField("Password", validators=[InputRequired("Enter your password.")])


class CodeForm(Form):
    code = StringField("Authentication code", validators=[DataRequired("Enter the code.")],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric",
                                  "autocapitalize": "off", "spellcheck": "false"})


class EmailOnlyForm(Form):
    email = EmailField("Email", validators=[DataRequired("Enter your email address.")])


class NewPasswordForm(Form):
    password = PasswordField("New password", validators=[InputRequired("Choose a new password.")])
    confirm = PasswordField("Repeat the new password",
                            validators=[EqualTo("password", "The two passwords do not match.")])
