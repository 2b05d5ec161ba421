from sqlalchemy import func, select

from tests.helpers import create_user
from users_service.models import UserCreate, users
from users_service.seed import seed_users


def count_users(app) -> int:
    with app.state.database.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(users)).scalar_one())


def test_seeding_adds_exactly_the_users_asked_for_in_several_batches(client, app):
    create_user(client)
    seed_users(app.state.database.engine, 2_500, batch_size=1_000, progress=False)
    assert count_users(app) == 2_501


def test_seeding_twice_adds_users_instead_of_colliding(client, app):
    seed_users(app.state.database.engine, 300, progress=False)
    seed_users(app.state.database.engine, 300, progress=False)
    assert count_users(app) == 600


def test_seeded_users_obey_the_rules_of_created_users_and_read_back_through_the_api(client, app):
    seed_users(app.state.database.engine, 200, progress=False)
    page = client.get("/users", params={"limit": 200}).json()["items"]
    assert len(page) == 200
    for user in page:
        UserCreate(name=user["name"], email=user["email"], age=user["age"])
        assert client.get(f"/users/{user['id']}").json() == user
