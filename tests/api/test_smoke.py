def test_created_user_can_be_read_back(client):
    created = client.post("/users", json={"name": "Ada", "email": "ada@example.com", "age": 36})
    assert created.status_code == 201
    fetched = client.get(created.headers["location"])
    assert fetched.json() == created.json()
